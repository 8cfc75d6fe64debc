"""The fuzz harnesses of tests/fuzz, each for a bounded run in its own process: the spec parser
(JSON and the CLI's YAML path) and the envelope decoder find no crash; only their documented
refusals escape (a crash ends libFuzzer with a non-zero status and the input that caused it).

Fixed seeds keep the runs repeatable; scripts/fuzz.sh runs them longer, with random seeds.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuzz.seeds import write_envelope_seeds, write_spec_seeds

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: Bounded by runs, capped by time so a loaded machine stays near 30 s per harness.
MAX_SECONDS = 30


@pytest.mark.parametrize(
    ("harness", "seeds", "runs"),
    [("envelope", write_envelope_seeds, 500_000), ("spec", write_spec_seeds, 10_000)],
)
def test_the_harness_finds_no_crash(
    harness: str, seeds: Callable[[Path], None], runs: int, tmp_path: Path
) -> None:
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    seeds(corpus)
    crashes.mkdir()
    command = [
        sys.executable,
        str(ROOT / "tests" / "fuzz" / f"{harness}_harness.py"),
        f"-runs={runs}",
        f"-max_total_time={MAX_SECONDS}",
        "-seed=8",
        f"-artifact_prefix={crashes}/",
        str(corpus),
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert not list(crashes.iterdir()), output[-4000:]
    executed = re.search(r"^Done (\d+) runs", output, re.MULTILINE)
    assert executed and int(executed.group(1)) >= 1000, output[-2000:]
