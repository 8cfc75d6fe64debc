"""The lag-over-time plot of `bench.e2e` as a small hand-written SVG (no plotting dependency).

One panel per phase: x is seconds since the generator started writing, y the freshness of the
changes written in that second (p50 and max; source commit to visible in Delta). The shaded band
is the warm-up left out of the statistics; the dashed line is where the generator stopped.

    .venv/bin/python -m bench.e2e_plot bench/results/e2e-<tag>.json docs/img/e2e-lag.svg
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["write_svg"]

WIDTH, PANEL_H, MARGIN_L, MARGIN_R, MARGIN_T, GAP = 900, 170, 60, 20, 56, 46


def _nice_max(value: float) -> float:
    """1, 2 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _title(phase: dict[str, Any]) -> str:
    target = f"{phase['target_rate']:,.0f}/s target" if phase["target_rate"] else "saturation"
    f = phase["freshness_s"]
    return (
        f"{target}: wrote {phase['write'].get('rate', 0):,.0f}/s, applied "
        f"{phase['applied_rate']:,.0f}/s; freshness p50 {f.get('p50', 0):.2f} s, "
        f"p95 {f.get('p95', 0):.2f} s, p99 {f.get('p99', 0):.2f} s"
    )


def write_svg(report: dict[str, Any], path: Path) -> None:
    phases = [p for p in report["phases"] if p.get("series", {}).get("lag")]
    height = MARGIN_T + len(phases) * (PANEL_H + GAP) + 10
    plot_w = WIDTH - MARGIN_L - MARGIN_R
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN_L}" y="18" font-size="13" font-weight="bold">'
        f"{escape('Freshness over time (source commit to visible in Delta), per second written')}"
        "</text>",
        f'<text x="{MARGIN_L}" y="32" fill="#555">'
        f"{escape(report.get('date', ''))}, commit {escape(report.get('commit', ''))}, "
        f"{report.get('machine', {}).get('nproc', '?')} cores, shared. "
        "Blue: p50, red: max; shaded: warm-up; dashed: writer stopped;</text>",
        f'<text x="{MARGIN_L}" y="46" fill="#555">grey dots: some changes written in that '
        "second were not visible when the phase ended (the lag they had by then, a lower "
        "bound)</text>",
    ]
    warmup = float(report.get("args", {}).get("warmup", 0))
    for i, phase in enumerate(phases):
        top = MARGIN_T + i * (PANEL_H + GAP) + 18
        lag = phase["series"]["lag"]
        written_s = phase["write"]["ended"] - phase["write"]["started"]
        x_max = _nice_max(max(max(p[0] for p in lag) + 1, written_s))
        y_max = _nice_max(max(p[2] for p in lag))

        def x(v: float, x_max: float = x_max) -> float:
            return MARGIN_L + v / x_max * plot_w

        def y(v: float, top: float = top, y_max: float = y_max) -> float:
            return top + PANEL_H - min(v, y_max) / y_max * PANEL_H

        out.append(f'<text x="{MARGIN_L}" y="{top - 6}">{escape(_title(phase))}</text>')
        out.append(
            f'<rect x="{MARGIN_L}" y="{top}" width="{plot_w}" height="{PANEL_H}" '
            'fill="none" stroke="#999"/>'
        )
        out.append(
            f'<rect x="{MARGIN_L}" y="{top}" width="{x(warmup) - MARGIN_L:.1f}" '
            f'height="{PANEL_H}" fill="#eee"/>'
        )
        out.append(
            f'<line x1="{x(written_s):.1f}" y1="{top}" x2="{x(written_s):.1f}" '
            f'y2="{top + PANEL_H}" stroke="#666" stroke-dasharray="4 3"/>'
        )
        for k in range(5):
            value = y_max * k / 4
            out.append(
                f'<text x="{MARGIN_L - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                f"{value:g} s</text>"
            )
            if k:
                out.append(
                    f'<line x1="{MARGIN_L}" y1="{y(value):.1f}" x2="{MARGIN_L + plot_w}" '
                    f'y2="{y(value):.1f}" stroke="#eee"/>'
                )
        for k in range(6):
            value = x_max * k / 5
            out.append(
                f'<text x="{x(value):.1f}" y="{top + PANEL_H + 14}" text-anchor="middle">'
                f"{value:g} s</text>"
            )
        seen = [p for p in lag if len(p) < 5 or not p[4]]
        for column, colour in ((2, "#c0392b"), (1, "#2c6fbb")):
            points = " ".join(f"{x(p[0] + 0.5):.1f},{y(p[column]):.1f}" for p in seen)
            out.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
            )
        for p in lag:
            if len(p) >= 5 and p[4]:
                out.append(
                    f'<circle cx="{x(p[0] + 0.5):.1f}" cy="{y(p[2]):.1f}" r="1.8" fill="#999"/>'
                )
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    write_svg(json.loads(Path(argv[0]).read_text()), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
