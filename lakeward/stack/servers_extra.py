"""Servers started on request (`lakeward stack up --with NAME` or `--all`)."""

from __future__ import annotations

from lakeward.stack.server import Server

__all__ = ["extra_servers"]


def extra_servers() -> list[Server]:
    return []
