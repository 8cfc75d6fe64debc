#!/usr/bin/env bash
# A pipeline's workflow execution: run id, status, search attributes, pending activities (capture
# and the batch in flight, with their attempts and last failure).
#   describe-pipeline.sh orders
#   describe-pipeline.sh orders --reset-points       where `reset-pipeline.sh` can go back to
#   describe-pipeline.sh orders -o json              (any temporal describe flag)
set -euo pipefail
USAGE="describe-pipeline.sh NAME [temporal describe flags...]"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pipeline_command describe "$@"
