"""`lakeward stack`: bring the embedded default's servers up and down as local processes."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lakeward.settings import StackSettings
from lakeward.stack.process import ManagedProcess, StackError, ensure_port_free, wait_until
from lakeward.stack.server import Server, StackContext

__all__ = ["LAKEWARD_SERVICES", "ServerStatus", "Stack", "all_servers"]

#: Lakeward's own processes, started beside the servers by `lakeward demo`.
LAKEWARD_SERVICES = ("worker", "api")


def all_servers() -> list[Server]:
    """Every server the stack knows, in start order (dependencies first)."""
    from lakeward.stack.servers import KafkaServer, MongoServer, TemporalServer
    from lakeward.stack.servers_extra import extra_servers

    return [MongoServer(), KafkaServer(), TemporalServer(), *extra_servers()]


@dataclass
class ServerStatus:
    server: str
    address: str
    state: str  # running | stopped | unhealthy
    version: str
    pid: int | None
    ports: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Stack:
    """The local stack rooted at ``settings.stack_dir``."""

    def __init__(self, settings: StackSettings | None = None, servers: list[Server] | None = None):
        self.ctx = StackContext(settings or StackSettings())
        self.servers = servers if servers is not None else all_servers()

    def select(self, names: Iterable[str] = (), everything: bool = False) -> list[Server]:
        """The default servers plus the named ones (``--with``), or all of them."""
        wanted = set(names)
        known = {s.name for s in self.servers}
        unknown = wanted - known
        if unknown:
            raise StackError(
                f"unknown server(s): {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return [s for s in self.servers if everything or s.default or s.name in wanted]

    def process(self, server: Server) -> ManagedProcess:
        return self.service(server.name)

    def service(self, name: str) -> ManagedProcess:
        """The PID and log files of a process of this stack: a server, or Lakeward's own
        `worker` and `api` that `lakeward demo` starts beside the servers."""
        root = self.ctx.root
        return ManagedProcess(
            name=name,
            pid_file=root / "run" / f"{name}.pid",
            log_file=root / "logs" / f"{name}.log",
        )

    def install(self, servers: list[Server]) -> None:
        """Check prerequisites and fetch registry artefacts (jars) for the given servers."""
        for server in servers:
            server.check_prerequisites(self.ctx)
            server.install(self.ctx)

    def up(self, servers: list[Server], on_event=None) -> dict[str, float]:
        """Start what is not running and wait for each to be ready; returns seconds per server.

        Idempotent: a running, healthy server is left alone.
        """
        timings: dict[str, float] = {}
        notify = on_event or (lambda _server, _message: None)
        for server in servers:
            started = time.monotonic()
            proc = self.process(server)
            if proc.is_running():
                if not wait_until(
                    functools.partial(server.is_ready, self.ctx), self.ctx.settings.health_timeout_s
                ):
                    raise StackError(
                        f"{server.name} is running (pid {proc.read_pid()}) but not answering; "
                        f"see `lakeward stack logs {server.name}`"
                    )
                server.after_start(self.ctx)
                notify(server, "already running")
                timings[server.name] = 0.0
                continue
            server.check_prerequisites(self.ctx)
            for port in server.ports(self.ctx):
                ensure_port_free(self.ctx.settings.host, port.number, server.name, port.env_name)
            notify(server, "preparing")
            server.prepare(self.ctx)
            proc.start(server.command(self.ctx), cwd=self.ctx.data_dir(server.name),
                       env=server.env(self.ctx))  # fmt: skip
            notify(server, "starting")
            ready = wait_until(
                functools.partial(server.is_ready, self.ctx),
                self.ctx.settings.health_timeout_s,
                interval=0.25,
                alive=proc.is_running,
            )
            if not ready:
                alive = proc.is_running()
                proc.stop(timeout=10)
                why = "did not become ready in time" if alive else "exited"
                raise StackError(
                    f"{server.name} {why}; last lines of {proc.log_file}:\n{proc.tail(20)}"
                )
            server.after_start(self.ctx)
            timings[server.name] = time.monotonic() - started
            notify(server, f"ready in {timings[server.name]:.1f}s")
        return timings

    def down(self, servers: list[Server] | None = None) -> list[str]:
        """Stop servers in reverse start order; data stays. Returns the names that were stopped."""
        stopped = []
        for server in reversed(servers if servers is not None else self.servers):
            if self.process(server).stop():
                stopped.append(server.name)
        return stopped

    def status(self, servers: list[Server] | None = None) -> list[ServerStatus]:
        rows = []
        for server in servers if servers is not None else self.servers:
            pid = self.process(server).read_pid()
            if pid is None:
                state = "stopped"
            else:
                state = "running" if server.is_ready(self.ctx) else "unhealthy"
            rows.append(
                ServerStatus(
                    server=server.name,
                    address=server.address(self.ctx),
                    state=state,
                    version=server.version(self.ctx),
                    pid=pid,
                    ports={p.role: p.number for p in server.ports(self.ctx)},
                )
            )
        return rows

    def logs(self, name: str, lines: int = 100) -> str:
        known = [s.name for s in self.servers] + list(LAKEWARD_SERVICES)
        if name not in known:
            raise StackError(f"unknown server {name!r}; known: {', '.join(known)}")
        return self.service(name).tail(lines)
