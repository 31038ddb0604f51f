#!/usr/bin/env bash
# Submits a training run to a running Ray cluster through its job API (the dashboard's address, e.g.
# http://127.0.0.1:8265 through `ray dashboard CLUSTER.yaml` or `kubectl port-forward`). The project's source
# travels with the job (deploy/runtime_env.yaml says what stays behind); every node needs the project's
# dependencies installed (deploy/install.sh or the image of deploy/Dockerfile).
# Token authentication stays on: the token comes from ~/.ray/auth_token or RAY_AUTH_TOKEN.
#   RAY_ADDRESS=http://127.0.0.1:8265 bash deploy/submit.sh configs/demo.yaml distill.steps=100
set -euo pipefail
config=${1:?usage: submit.sh CONFIG.yaml [PLAN.yaml] [key.sub=value ...]}
shift
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
exec ray job submit --address "${RAY_ADDRESS:?set RAY_ADDRESS to the job API of the cluster, e.g. http://127.0.0.1:8265}" \
  --runtime-env deploy/runtime_env.yaml ${SUBMIT_ARGS:-} -- dudi train "$config" ray.address=auto "$@"
