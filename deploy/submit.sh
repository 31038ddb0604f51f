#!/usr/bin/env bash
# Submits a training run to a running Ray cluster (its dashboard address in RAY_ADDRESS, e.g.
# http://head:8265). Every node needs the project installed (deploy/install.sh) in the same path.
#   RAY_ADDRESS=http://head:8265 bash deploy/submit.sh configs/demo.yaml distill.steps=100
set -euo pipefail
config=${1:?usage: submit.sh CONFIG.yaml [key.sub=value ...]}
shift
exec ray job submit --address "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster dashboard, e.g. http://head:8265}" \
  --working-dir . -- dudi train "$config" ray.address=auto "$@"
