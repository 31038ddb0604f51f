#!/usr/bin/env bash
# Builds DeepSpeed's CPU shared-memory all-reduce (`deepspeed_shm_comm`) once, ahead of the first learner of two
# or more CPU ranks, which would otherwise JIT-build it when it starts (30-50 s on 2 cores). One-rank learners
# never load it (learner/rank.py). The environment's ninja builds it, as in every learner rank, so the build is
# not redone by another ninja version.
#   VENV=.venv bash deploy/build_cpu_ops.sh
set -euo pipefail
VENV=${VENV:-.venv}
cd "$(dirname "$0")/.."
echo "building DeepSpeed's CPU communication op (once; about a minute)"
PATH="$(cd "$VENV/bin" && pwd):$PATH" DS_ACCELERATOR=cpu "$VENV/bin/python" -c "
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
ShareMemCommBuilder().load(verbose=False)"
