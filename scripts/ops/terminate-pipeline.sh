#!/usr/bin/env bash
# Terminate a pipeline's workflow at once, with a reason kept in its history. The last resort:
# nothing of the workflow runs any more, so a Debezium connector is not released and the batch
# in flight is abandoned (a later run re-reads it from Kafka; the Delta txn versions keep it from
# being applied twice). Prefer `signal-pipeline.sh stop NAME`.
#   terminate-pipeline.sh orders "stuck after the broker migration, INC-2231"
set -euo pipefail
USAGE="terminate-pipeline.sh NAME REASON"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# == 2)) || usage
id=$(pipeline_id "$1")
[[ -n $2 ]] || fail "a reason is required: it is kept in the history"
workflow_cli terminate --workflow-id "$id" --reason "$2"
