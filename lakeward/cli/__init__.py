"""The `lakeward` command line."""

from lakeward.cli.main import app

__all__ = ["app"]
