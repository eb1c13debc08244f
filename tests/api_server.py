"""Starting ``lineguard serve`` as a real process for the API and dashboard tests."""

from __future__ import annotations

import re
import time
from pathlib import Path

from lineguard.components import Component

_LISTENING = re.compile(r"serve: listening on (http://\S+)")


class ApiServer:
    """A running ``lineguard serve --port 0``; ``url`` is where it listens."""

    def __init__(self, env: dict[str, str], log_path: Path, timeout_s: float = 90.0) -> None:
        self.component = Component(["serve", "--host", "127.0.0.1", "--port", "0"], env, log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.component.output())
            if match:
                self.url = match.group(1)
                return
            if not self.component.alive():
                raise RuntimeError(f"lineguard serve exited:\n{self.component.output()[-3000:]}")
            time.sleep(0.2)
        self.component.stop()
        raise RuntimeError(f"lineguard serve did not start in {timeout_s}s:\n{self.component.output()[-3000:]}")

    def output(self) -> str:
        return self.component.output()

    def stop(self) -> int:
        return self.component.stop()
