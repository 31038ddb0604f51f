#!/usr/bin/env bash
# The GPU checks as one short script, for a bare GPU box with torch and transformers (no Ray, vLLM or DeepSpeed):
# the CUDA tests of the objective, the chunked loss and the teacher scorer, then the loss-memory probe.
#
#   bash benchmarks/gpu_probe.sh [RESULTS_DIR]      # from the repository root; results default to benchmarks/results
#
# pydantic (the configs) is the one package such a box may lack: wheels in .whl/ are installed into /tmp/site.
set -euo pipefail
out=${1:-benchmarks/results}
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# --noconftest: the shared fixtures import the CPU stack (tiny world, Ray); the GPU tests need none of them.
python3 -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/test_gpu.py
python3 benchmarks/loss_memory.py --device cuda --out "$out"
