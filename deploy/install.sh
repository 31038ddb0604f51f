#!/usr/bin/env bash
# Installs DuDi-Dist into a virtual environment from the project's own files.
#   PYTHON=python3.11 VENV=.venv EXTRAS=cpu,dev,bench bash deploy/install.sh
# EXTRAS=gpu,dev on a CUDA machine.
set -euo pipefail
PYTHON=${PYTHON:-python3.11}
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
