"""Process supervision for the local stack: detached start, pid files, liveness, stop, waits.

Services are started detached (own session, re-parented away from the caller)
so they outlive ``lineguard stack up`` and never become zombies of a
long-running caller such as pytest. A pid counts as ours only while its
command line holds the service's marker (a path inside the state dir), so a
recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger("lineguard.stack")

MiB = 1024 * 1024


class StackError(RuntimeError):
    """A readable reason why the stack cannot be fetched, started or stopped."""


class Service:
    """One detached process of a stack: ``<state_dir>/run/<name>.pid``, ``<state_dir>/logs/<name>.log``."""

    def __init__(self, state_dir: Path, name: str, marker: str) -> None:
        self.name = name
        self.marker = marker  # a path only this stack's process of this service has on its command line
        self.pid_file = state_dir / "run" / f"{name}.pid"
        self.log_file = state_dir / "logs" / f"{name}.log"

    def running(self) -> int | None:
        """The service's pid, or None when it does not run."""
        pid = _read_pid(self.pid_file)
        if pid is not None and self.alive(pid):
            return pid
        return None

    def alive(self, pid: int) -> bool:
        return process_alive(pid, self.marker)

    def died(self, pid: int, confirm_s: float = 0.5) -> bool:
        """True if ``pid`` is gone and still gone ``confirm_s`` later (for start-up waits).

        Just after the launcher forks it, the process execs its binary, and while the kernel swaps
        its memory ``/proc/<pid>/cmdline`` can read empty: one look would call a starting server
        dead (seen once: versitygw "exited during startup" with an empty log, then found running).
        """
        if self.alive(pid):
            return False
        time.sleep(confirm_s)
        return not self.alive(pid)

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> int:
        """Start ``cmd`` in its own session, orphaned from us, output appended to the log.

        A throwaway ``sh`` starts the command in the background, writes its pid and
        exits, so the command is re-parented to init and can't linger as our zombie.
        """
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.unlink(missing_ok=True)
        _rotate(self.log_file)
        with self.log_file.open("ab") as out:
            out.write(f"\n===== lineguard stack: starting at {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
            out.flush()
            launcher = 'pid_file=$1; shift; "$@" & echo $! > "$pid_file"'
            subprocess.run(
                ["/bin/sh", "-c", launcher, "sh", str(self.pid_file), *cmd],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                check=True,
            )
        pid = _read_pid(self.pid_file)
        if pid is None:
            raise StackError(f"could not start {cmd[0]}: no pid written to {self.pid_file}")
        return pid

    def terminate(self) -> None:
        """SIGTERM without waiting, so several services' shutdowns overlap."""
        pid = self.running()
        if pid is not None:
            _terminate_group(pid)

    def send(self, sig: int) -> None:
        """Signal the running service's process group (fault injection: SIGKILL, SIGSTOP, SIGCONT)."""
        pid = self.running()
        if pid is not None:
            _signal_group(pid, sig)

    def stopped(self) -> bool:
        """True while the service is frozen by SIGSTOP."""
        pid = self.running()
        return pid is not None and _proc_state(pid) == "T"

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM the process (group), SIGKILL after ``timeout_s``; True if one was running."""
        pid = _read_pid(self.pid_file)
        if pid is None or not self.alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return False
        log.info("stopping %s (pid %d)", self.name, pid)
        _terminate_group(pid)
        deadline = time.monotonic() + timeout_s
        while self.alive(pid):
            if time.monotonic() > deadline:
                log.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", self.name, pid, timeout_s)
                _signal_group(pid, signal.SIGKILL)
                wait_until(lambda: not self.alive(pid), 10, f"{self.name} to die after SIGKILL")
                break
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def exited_during_startup(self, what: str) -> StackError:
        return StackError(f"{what} exited during startup; last lines of {self.log_file}:\n" + self.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def process_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs, is not a zombie, and its command line contains ``marker``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return _state_of(stat) not in ("Z", "X") and marker in cmdline


def _state_of(stat: str) -> str:
    # Field 3 of /proc/<pid>/stat is the state; the command name before it is in parentheses.
    return stat.rsplit(")", 1)[-1].split()[0]


def _proc_state(pid: int) -> str | None:
    try:
        return _state_of(Path(f"/proc/{pid}/stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _rotate(log_file: Path, max_bytes: int = 64 * MiB) -> None:
    if log_file.exists() and log_file.stat().st_size > max_bytes:
        log_file.replace(log_file.with_name(log_file.name + ".1"))


def _signal_group(pid: int, sig: int) -> None:
    """Signal the service's process group (its own session), never the caller's."""
    with contextlib.suppress(ProcessLookupError):
        group = os.getpgid(pid)
        if group == os.getpgrp():
            os.kill(pid, sig)
        else:
            os.killpg(group, sig)


def _terminate_group(pid: int) -> None:
    """SIGTERM, then SIGCONT so that a frozen (SIGSTOPped) service wakes up to handle it."""
    _signal_group(pid, signal.SIGTERM)
    _signal_group(pid, signal.SIGCONT)


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


def port_free(port: int) -> bool:
    # SO_REUSEADDR as servers set it, so a port in TIME_WAIT after a restart counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialize fetches/ups that share a folder (several engineers or test sessions at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"`{name}` not found on PATH: {hint}")
    return path


def run_logged(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a tool to completion; on failure raise with the last lines of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip().splitlines()[-40:]
        raise StackError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(output))
