#!/usr/bin/env bash
# The pipeline's own view, from its `status` query: state, per-table offsets, Delta versions,
# counts, last error. Needs a running worker (a query is answered by one).
#   pipeline-status.sh orders
#   pipeline-status.sh orders -o json
set -euo pipefail
USAGE="pipeline-status.sh NAME [temporal query flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 1)) || usage
id=$(pipeline_id "$1")
shift
workflow_cli query --workflow-id "$id" --name status "$@"
