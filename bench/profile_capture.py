"""cProfile of Lakeward's own capture strategies on the benchmark's workloads (mongo and kafka of
the bench stack only). Prints the top functions by own time; the rates it prints are slowed by
the profiler.

    .venv/bin/python -m bench.profile_capture --docs 20000
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):  # `python bench/profile_capture.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.capture import PORTS, REPO, measure_lakeward, write_workload
from lakeward.settings import StackSettings
from lakeward.stack import Stack


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--docs", type=int, default=20_000)
    p.add_argument("--top", type=int, default=14)
    args = p.parse_args(argv)
    settings = StackSettings(
        stack_dir=REPO / ".lakeward" / "bench-stack", lib_dir=REPO / ".lakeward" / "lib", **PORTS
    )
    stack = Stack(settings)
    servers = [s for s in stack.servers if s.name in ("mongo", "kafka")]
    stack.up(servers)
    try:
        tag = uuid.uuid4().hex[:6]
        for kind in ("insert", "update"):
            w = write_workload(settings.mongo_uri, kind, args.docs, tag)
            for strategy in ("change_stream", "oplog"):
                profile = cProfile.Profile()
                profile.enable()
                r = asyncio.run(measure_lakeward(settings, w, strategy, 1, tag))
                profile.disable()
                print(f"{kind} {strategy}: {r.rate:,.0f} ev/s under the profiler")
                pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    finally:
        print("stopping:", ", ".join(stack.down(servers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
