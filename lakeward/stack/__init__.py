"""The embedded default: real servers run as local processes (`lakeward stack`)."""

from lakeward.stack.process import StackError
from lakeward.stack.stack import ServerStatus, Stack, all_servers

__all__ = ["ServerStatus", "Stack", "StackError", "all_servers"]
