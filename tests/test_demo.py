"""The README's main command: `lakeward demo` runs the pipeline end to end on the embedded default.

It runs on a stack of its own (free ports, a temporary folder), because `demo --down` stops every
server of the stack it used.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lakeward.settings import StackSettings

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_demo_prints_a_lake_that_matches_the_source(tmp_path) -> None:
    lakeward = Path(sys.executable).parent / "lakeward"
    ports = {
        f"LAKEWARD_{name.upper()}": str(_free_port())
        for name in StackSettings.model_fields
        if name.endswith("_port")
    }
    env = {
        **os.environ,
        **ports,
        "LAKEWARD_STACK_DIR": str(tmp_path / "stack"),
        "LAKEWARD_LIB_DIR": str(REPO / ".lakeward" / "lib"),
        "COLUMNS": "200",
    }
    try:
        demo = subprocess.run(
            [str(lakeward), "demo", "--operations", "400", "--rate", "2000", "--seed", "7"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        down = subprocess.run(
            [str(lakeward), "demo", "--down"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    counts = re.search(r"documents\s*│\s*(\d+)\s*│\s*(\d+)", demo.stdout)
    assert counts, demo.stdout
    assert counts.group(1) == counts.group(2) != "0"
    assert f"127.0.0.1:{ports['LAKEWARD_TEMPORAL_UI_PORT']}/namespaces/default" in demo.stdout
    assert (tmp_path / ".lakeward" / "lake" / "shop" / "orders" / "_delta_log").is_dir()
    assert down.returncode == 0
    assert "api, worker, temporal, kafka, mongo" in down.stdout
