#!/usr/bin/env bash
# Reset a pipeline's workflow to an earlier point: Temporal ends the current run and starts a new
# one that replays the history up to that point and runs on from there. Signals received after
# the point are applied again (a pause stays a pause). Batches after the point run again, which
# the Delta txn versions make harmless (nothing is applied twice).
#   reset-pipeline.sh orders last-workflow-task "worker bug fixed in 1.4.2"
#   reset-pipeline.sh orders 1234 "retry from before the failed batch"   (an event id)
#   reset-pipeline.sh -r RUN_ID orders first-workflow-task "start over"
# Points: first-workflow-task, last-workflow-task, last-continued-as-new, or an event id of a
# WorkflowTaskCompleted (see `pipeline-history.sh NAME` and `describe-pipeline.sh NAME --reset-points`).
set -euo pipefail
USAGE="reset-pipeline.sh [-r RUN_ID] NAME POINT REASON"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run=()
while getopts ":r:h" option; do
  case $option in
    r) run=(--run-id "$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
(($# == 3)) || usage
id=$(pipeline_id "$1")
point=$2
reason=$3
[[ -n $reason ]] || fail "a reason is required: it is kept in the history"

case $point in
  first-workflow-task) to=(--type FirstWorkflowTask) ;;
  last-workflow-task) to=(--type LastWorkflowTask) ;;
  last-continued-as-new) to=(--type LastContinuedAsNew) ;;
  *)
    [[ $point =~ ^[0-9]+$ ]] || fail "unknown point $point; see the usage notes at the top of $0"
    to=(--event-id "$point")
    ;;
esac
reply=$(workflow_cli reset --workflow-id "$id" "${run[@]}" "${to[@]}" --reason "$reason" --output jsonl)
new_run=$(sed -n 's/.*"runId": *"\([^"]*\)".*/\1/p' <<<"$reply")
[[ -n $new_run ]] || fail "unexpected reply from temporal workflow reset: $reply"
echo "$id reset to $point; new run $new_run"
