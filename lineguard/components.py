"""Running lineguard components (``lineguard process``, ``lineguard sink`` ...) as child processes.

The demo, the benchmarks and the end-to-end tests all start the parts as
separate processes, the way a plant runs them; this is the one place that
knows how. Each child gets its own session (so a signal to the parent's
terminal does not hit it) and writes its output to a log file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def component_env(kafka_bootstrap: str | None = None, state_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment without its LINEGUARD_* settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEGUARD_")}
    if kafka_bootstrap:
        env["LINEGUARD_KAFKA__BOOTSTRAP_SERVERS"] = kafka_bootstrap
    if state_dir is not None:
        env["LINEGUARD_STATE_DIR"] = str(state_dir)
    env.update(extra)
    return env


class Component:
    """One ``lineguard ARGS...`` child process with its output in ``log_path``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "lineguard.cli", *args], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal (SIGTERM: a graceful stop), wait, and kill if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode
