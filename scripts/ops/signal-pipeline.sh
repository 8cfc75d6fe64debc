#!/usr/bin/env bash
# Send a pipeline one of its signals; each is idempotent (a second pause is harmless).
#   pause   no new micro-batch starts; the one in flight commits (or is cancelled after 30 s)
#   resume  continue from the Delta txn versions
#   stop    end the pipeline gracefully: capture ends, a Debezium connector is released
#   signal-pipeline.sh pause orders customers
set -euo pipefail
USAGE="signal-pipeline.sh pause|resume|stop NAME [NAME...]"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# >= 2)) || usage
signal=$1
shift
case $signal in
  pause | resume | stop) ;;
  *) usage ;;
esac
for name in "$@"; do
  id=$(pipeline_id "$name")
  workflow_cli signal --workflow-id "$id" --name "$signal" >/dev/null
  echo "$signal sent to $id"
done
