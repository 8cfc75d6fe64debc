"""The contract every local-stack server implements.

A server knows its ports, its command line, how to prepare its data folder once, how to tell it is
ready, what to do after it is up (initiate a replica set, create a bucket), and what it needs on the
machine. The stack (``lakeward.stack.stack``) does the rest: PID files, port checks, health waits.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from lakeward.settings import StackSettings

__all__ = ["Port", "Server", "StackContext", "require_binary"]


@dataclass(frozen=True)
class Port:
    """A port a server binds, with the setting and environment variable that change it."""

    role: str
    number: int
    setting: str

    @property
    def env_name(self) -> str:
        return f"LAKEWARD_{self.setting.upper()}"


@dataclass(frozen=True)
class StackContext:
    settings: StackSettings

    @property
    def root(self) -> Path:
        return self.settings.stack_dir.resolve()

    def data_dir(self, server: str) -> Path:
        return self.root / "data" / server

    def lib_dir(self, name: str) -> Path:
        """Resolved jars: shared by all stack folders, so the test stack resolves nothing again."""
        return self.settings.lib_dir.resolve() / name


def require_binary(name: str, install_hint: str) -> str:
    """The absolute path of an executable, or a StackError naming the command that installs it."""
    from lakeward.stack.process import StackError

    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed; install it with: {install_hint}")
    return path


class Server(ABC):
    """One local server. Subclasses are small: a command line and a readiness probe."""

    name: str
    #: Started by a bare `lakeward stack up`; the others need `--with NAME` or `--all`.
    default: bool = True

    @abstractmethod
    def ports(self, ctx: StackContext) -> list[Port]:
        """Ports it binds; the first is the one clients use."""

    def address(self, ctx: StackContext) -> str:
        return f"{ctx.settings.host}:{self.ports(ctx)[0].number}"

    def check_prerequisites(self, ctx: StackContext) -> None:  # noqa: B027 - optional hook
        """Raise StackError with the install command when something the server needs is missing."""

    def install(self, ctx: StackContext) -> None:  # noqa: B027 - optional hook
        """Fetch what the server needs from a registry (jars); `lakeward stack setup` runs it."""

    def prepare(self, ctx: StackContext) -> None:  # noqa: B027 - optional hook
        """One-time set-up of the data folder before the first start (idempotent)."""

    @abstractmethod
    def command(self, ctx: StackContext) -> list[str]:
        """The argv that runs the server in the foreground."""

    def env(self, ctx: StackContext) -> dict[str, str]:
        return {}

    @abstractmethod
    def is_ready(self, ctx: StackContext) -> bool:
        """True when the server answers real requests (not only that its port is open)."""

    def after_start(self, ctx: StackContext) -> None:  # noqa: B027 - optional hook
        """Work that needs the running server, e.g. a replica-set initiation; idempotent."""

    @abstractmethod
    def version(self, ctx: StackContext) -> str:
        """The server's version, read from the binary or the jars without starting it."""
