#!/usr/bin/env bash
# List pipelines through Temporal visibility, filtered by Lakeward's search attributes.
#   list-pipelines.sh                      running pipelines
#   list-pipelines.sh -s PAUSED            running pipelines that are paused
#   list-pipelines.sh -S shop:oplog -a     every run, closed ones too, capturing shop by oplog
#   list-pipelines.sh -o json              JSON for scripts (any temporal flag after the options)
set -euo pipefail
USAGE="list-pipelines.sh [-s STATE] [-p NAME] [-S DATABASE:CAPTURE] [-a] [temporal list flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

query="WorkflowType = '$PIPELINE_WORKFLOW_TYPE'"
only_running=1
while getopts ":s:p:S:ah" option; do
  case $option in
    s)
      [[ " $PIPELINE_STATES " == *" $OPTARG "* ]] || fail "unknown state $OPTARG; one of: $PIPELINE_STATES"
      query+=" AND LakewardState = '$OPTARG'"
      ;;
    p)
      id=$(pipeline_id "$OPTARG")
      query+=" AND LakewardPipeline = '${id#pipeline:}'"
      ;;
    S)
      [[ $OPTARG =~ ^[A-Za-z0-9_.-]+:[a-z_]+$ ]] || fail "source is DATABASE:CAPTURE, e.g. shop:change_stream"
      query+=" AND LakewardSource = '$OPTARG'"
      ;;
    a) only_running=0 ;;
    h) usage ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
((only_running)) && query+=" AND ExecutionStatus = 'Running'"

echo "# $query" >&2
workflow_cli list --query "$query" "$@"
