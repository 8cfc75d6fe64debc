#!/usr/bin/env bash
# A pipeline's event history (the latest run unless -r RUN_ID is given).
#   pipeline-history.sh orders                   the events as a table
#   pipeline-history.sh orders --detailed        every event with its (decoded) payloads
#   pipeline-history.sh orders --follow          new events as they happen
#   pipeline-history.sh orders -o json > h.json  for a replay test or the Web UI's Import
set -euo pipefail
USAGE="pipeline-history.sh NAME [temporal show flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pipeline_command show "$@"
