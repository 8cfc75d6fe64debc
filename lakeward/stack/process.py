"""Supervision of local server processes: start detached, PID files, health waits, clean stop.

Each server runs in its own session (process group) so `down` stops exactly what `up` started,
by PID, and nothing else. A PID file records the PID with its start time, so a PID reused by an
unrelated process after a reboot is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "ManagedProcess",
    "StackError",
    "ensure_port_free",
    "is_port_open",
    "wait_until",
]


class StackError(RuntimeError):
    """A local-stack problem a person can fix; the message says how."""


def is_port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_port_free(host: str, port: int, server: str, env_name: str) -> None:
    """Raise a StackError naming the port when another process already holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Without SO_REUSEADDR a port in TIME_WAIT would look taken although a server can bind it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"port {port} on {host} is already in use, so {server} cannot start; "
                f"stop whatever holds it, or choose another port with {env_name}=<port>"
            ) from exc


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.2,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Poll until predicate() is true (True), or the deadline passes or alive() fails (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if alive is not None and not alive():
            return False
        time.sleep(interval)
    return predicate()


@dataclass
class ManagedProcess:
    """One detached server process owned by the stack, identified by its PID file."""

    name: str
    pid_file: Path
    log_file: Path

    def read_pid(self) -> int | None:
        """The PID of our running process, or None if it is not running (removes stale files)."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        pid, started = int(record["pid"]), float(record["create_time"])
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
                return pid
        except psutil.NoSuchProcess:
            pass
        self.pid_file.unlink(missing_ok=True)
        return None

    def is_running(self) -> bool:
        return self.read_pid() is not None

    def start(self, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> int:
        """Start argv detached (own session), output appended to the log file; returns the PID."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- lakeward: starting {self.name}: {' '.join(argv)}\n".encode())
            log.flush()
            # posix_spawn rather than Popen: the server outlives this process, and a Popen object
            # dropped while its child runs warns (ResourceWarning) for no benefit here.
            previous = os.getcwd()
            os.chdir(cwd)
            try:
                pid = os.posix_spawnp(
                    argv[0],
                    list(argv),
                    {**os.environ, **(env or {})},
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                        (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                    ],
                    setsid=True,
                )
            except FileNotFoundError as exc:
                raise StackError(f"{self.name}: cannot run {argv[0]!r}: {exc.strerror}") from exc
            finally:
                os.chdir(previous)
        create_time = psutil.Process(pid).create_time()
        self.pid_file.write_text(json.dumps({"pid": pid, "create_time": create_time}))
        return pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the process group, SIGKILL it after timeout; True if something was stopped."""
        pid = self.read_pid()
        if pid is None:
            return False
        self._signal_group(pid, signal.SIGTERM)
        if not wait_until(lambda: not _exists(pid), timeout, interval=0.1):
            self._signal_group(pid, signal.SIGKILL)
            wait_until(lambda: not _exists(pid), 10.0, interval=0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)


def _exists(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            # Detached children are reaped by init; a zombie of ours has stopped all the same.
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
        return True
    except psutil.NoSuchProcess:
        return False
