"""The README's main command: `lakeward demo` runs the pipeline end to end on the embedded default.

It runs on a stack of its own (free ports, a temporary folder), because `demo --down` stops every
server of the stack it used.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lakeward.settings import StackSettings

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


#: Fixed ports below Linux's ephemeral range (32768+), clear of the defaults and of the test
#: stacks' offsets: a port picked by bind(0) comes from the ephemeral range and can be taken as an
#: outgoing connection's source port before the server binds it.
DEMO_PORTS = {
    "mongo_port": 26017, "kafka_port": 26092, "kafka_controller_port": 26093,
    "temporal_port": 26233, "temporal_ui_port": 26234, "s3_port": 26333, "vault_port": 26200,
    "prometheus_port": 26090, "connect_port": 26083, "api_port": 26000,
    "worker_metrics_port": 26464,
}  # fmt: skip


def test_demo_prints_a_lake_that_matches_the_source(tmp_path) -> None:
    lakeward = Path(sys.executable).parent / "lakeward"
    assert set(DEMO_PORTS) == {n for n in StackSettings.model_fields if n.endswith("_port")}
    ports = {f"LAKEWARD_{name.upper()}": str(port) for name, port in DEMO_PORTS.items()}
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
    # While paused, the table did not move and the lake lagged the source; resumed, it matched.
    assert re.search(r"table version stays at \d+; lake differs from the source", demo.stdout)
    assert "caught up" in demo.stdout.split("resumed")[-1]
    assert "pipeline demo is STOPPED" in demo.stdout
    assert f"127.0.0.1:{ports['LAKEWARD_TEMPORAL_UI_PORT']}/namespaces/default" in demo.stdout
    assert (tmp_path / ".lakeward" / "lake" / "shop" / "orders" / "_delta_log").is_dir()
    assert down.returncode == 0
    assert "api, worker, temporal, kafka, mongo" in down.stdout
