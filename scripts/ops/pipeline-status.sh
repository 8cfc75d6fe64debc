#!/usr/bin/env bash
# The pipeline's own view, from its `status` query: state, per-table offsets, Delta versions,
# counts, last error. Needs a running worker (a query is answered by one).
#   pipeline-status.sh orders
#   pipeline-status.sh orders -o json
set -euo pipefail
USAGE="pipeline-status.sh NAME [temporal query flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pipeline_command query "$@" --name status
