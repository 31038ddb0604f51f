#!/usr/bin/env bash
# The GPU checks as one short script, for a bare GPU box with torch and transformers (no Ray, vLLM or DeepSpeed):
# the CUDA tests (objective, chunked loss, the whole DuDi loss with routing, teacher scorer), the learner's and the
# scorer's CPU-tier tests again with a GPU present, the shared-buffer weight handoff by CUDA IPC and the NCCL weight
# group (on two GPUs or more), then the loss-memory and teacher-scoring probes.
#
#   bash benchmarks/gpu_probe.sh [RESULTS_DIR]      # from the repository root; results default to benchmarks/results
#
# pydantic (the configs) is the one package such a box may lack: wheels in .whl/ are installed into /tmp/site
# (fill it here with `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux2014_x86_64 -d .whl pydantic pydantic_core annotated-types typing-inspection`).
# Every step runs even when one before it fails; the script's status says whether any failed.
set -uo pipefail
out=${1:-benchmarks/results}
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The benchmarks import the project's packages from the checkout (nothing is pip-installed there).
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
failed=()
step() { echo "== $*"; "$@" || failed+=("$*"); }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# --noconftest: the shared fixtures import the CPU stack (tiny world, Ray); these tests need none of them.
step python3 -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/test_gpu.py
# The learner's and the scorer's own tests must not depend on the machine having no GPU.
step python3 -m pytest -q --noconftest -p no:cacheprovider tests/test_chunked.py tests/test_objective.py \
  tests/test_scorer_heads.py
# Weight sync through the receiver's own code: rank 0's bucket mapped by CUDA IPC in an unrelated process, and the
# NCCL weight group (two GPUs and more only: NCCL refuses two ranks on one GPU, so one GPU reports it skipped).
step python3 -m pytest -q -rs --noconftest -p no:cacheprovider tests/test_shared_tensors.py tests/test_weight_group.py
step python3 benchmarks/loss_memory.py --device cuda --out "$out"
step python3 benchmarks/scorer_speed.py --shape qwen2.5-0.5b --dtype bfloat16 --prompt-len 256 --out "$out"
# The platform, not the project: whether CUDA IPC works here decides how the colocated GPU weight sync is tested.
step python3 benchmarks/cuda_ipc_check.py
if ((${#failed[@]})); then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "all GPU checks passed"
