#!/usr/bin/env bash
# A longer fuzzing run of the harnesses in tests/fuzz (atheris / libFuzzer), one after another.
#
#   scripts/fuzz.sh [SECONDS_EACH] [HARNESS ...]      default: 600 s, envelope and spec
#
# Corpora grow in .lakeward/fuzz/<harness>/ (seeded from tests/fuzz/seeds.py on first use) and
# are reused by the next run; a crash is written to .lakeward/fuzz/<harness>-crashes/ and ends
# that harness's run with a non-zero status. Reproduce one with
#   .venv/bin/python tests/fuzz/<harness>_harness.py <crash-file>
# The last lines of each run are libFuzzer's totals (runs, coverage, corpus): docs/api.md keeps
# the figures of one run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(envelope spec)
python=.venv/bin/python
status=0
for name in "${harnesses[@]}"; do
  corpus=.lakeward/fuzz/$name
  crashes=.lakeward/fuzz/$name-crashes
  mkdir -p "$corpus" "$crashes"
  PYTHONPATH=$PWD "$python" -c "import sys; from pathlib import Path; \
from tests.fuzz.seeds import write_envelope_seeds, write_spec_seeds; \
{'envelope': write_envelope_seeds, 'spec': write_spec_seeds}[sys.argv[1]](Path(sys.argv[2]))" \
    "$name" "$corpus"
  echo "== $name: ${seconds}s, corpus $corpus ($(ls "$corpus" | wc -l) inputs)"
  log=.lakeward/fuzz/$name.log
  if PYTHONPATH=$PWD "$python" "tests/fuzz/${name}_harness.py" -max_total_time="$seconds" \
      -print_final_stats=1 -artifact_prefix="$crashes/" "$corpus" >"$log" 2>&1; then
    echo "   no crash"
  else
    status=1
    echo "   CRASH: see $log and $crashes/"
    grep -A20 "Uncaught Python exception" "$log" | head -30 || true
  fi
  grep -E "^Done|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added" "$log" || true
  grep -E "^#[0-9]+" "$log" | tail -1 || true
done
exit $status
