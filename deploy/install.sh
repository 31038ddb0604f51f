#!/usr/bin/env bash
# Installs DuDi-Dist into a virtual environment from the project's own files.
#   PYTHON=python3.12 VENV=.venv EXTRAS=cpu,dev,bench bash deploy/install.sh   (Python 3.11, 3.12 or 3.13)
#   BUILD_CPU_OPS=0: do not build DeepSpeed's CPU all-reduce op now (the first multi-rank learner will)
# EXTRAS=gpu,dev on a CUDA machine.
set -euo pipefail
if [ -z "${PYTHON:-}" ]; then  # the newest of 3.13, 3.12, 3.11 that runs (a disabled pyenv shim does not)
  for candidate in python3.13 python3.12 python3.11; do
    if "$candidate" -c "" 2>/dev/null; then PYTHON=$candidate; break; fi
  done
fi
PYTHON=${PYTHON:?Python 3.11, 3.12 or 3.13 is needed (python3.1x on PATH, or PYTHON=...)}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-cpu,dev,bench}
cd "$(dirname "$0")/.."

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# Torch first and pinned, so that nothing below resolves a different (CUDA, multi-GB) build.
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
# vLLM's CPU build depends on torchvision/torchaudio/torchcodec, whose PyPI builds break `import vllm`
# next to the CPU torch ("operator torchvision::nms does not exist"). Nothing here needs them.
if [[ "$EXTRAS" == *cpu* ]]; then
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
"$VENV/bin/python" -c "import vllm, ray, deepspeed, torch; print('installed: torch', torch.__version__, '| vllm', vllm.__version__, '| ray', ray.__version__, '| deepspeed', deepspeed.__version__)"
# DeepSpeed's CPU all-reduce op, built here so that the first multi-rank learner does not wait for it.
# BUILD_CPU_OPS=0 leaves it to first use (`make demo` does: its one learner rank never needs it).
if [[ "$EXTRAS" == *cpu* && "${BUILD_CPU_OPS:-1}" != 0 ]]; then
  VENV="$VENV" bash deploy/build_cpu_ops.sh
fi
