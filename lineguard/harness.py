"""The local-pipeline harness: producers, processors and sinks as ``lineguard`` child processes on one machine.

``lineguard demo``, ``lineguard bench pipeline`` and the end-to-end and fault tests start and stop
the parts through :class:`LocalPipeline`: each part a real process, as in a plant, meeting the others
only through Kafka topics. Also here: the /proc readers that measure the children.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable

from .components import Component, component_env
from .config import KafkaConfig
from .schemas import topics

PRODUCT = "washer"


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5,
             watch: Iterable[Component] = ()) -> None:
    """Poll ``predicate`` until true; raise at the timeout, or as soon as a ``watch``ed component exits."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for comp in watch:
            if not comp.alive():
                raise RuntimeError(f"waiting for {what}: {comp.args[0]} exited ({comp.proc.returncode}):\n"
                                   f"{comp.tail(30)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


class LocalPipeline:
    """Components for ``lines`` on one Kafka cluster; logs under ``log_dir``; :meth:`stop_all` stops them.

    ``group``: the processors' consumer group, and the prefix of the sinks' groups (explicit, so that
    waiting for a group to catch up never means guessing a default). ``env``: further ``LINEGUARD_*``
    settings for every component.
    """

    def __init__(self, kafka: KafkaConfig, state_dir: Path, lines: list[str], group: str,
                 log_dir: Path | None = None, model_dir: Path | None = None, **env: str) -> None:
        self.kafka = kafka
        self.lines = list(lines)
        self.state_dir = Path(state_dir)
        self.log_dir = Path(log_dir) if log_dir else self.state_dir / "logs"
        self.group = group
        settings = {"LINEGUARD_PROCESSOR__CONSUMER_GROUP": group}
        if model_dir is not None:
            settings["LINEGUARD_PROCESSOR__MODEL_DIR"] = str(model_dir)
        self.env = component_env(kafka.bootstrap_servers, self.state_dir, **settings, **env)
        self.components: list[Component] = []
        self.producer_stats: list[str] = []  # each producer's closing "produce: ..." line

    # ---- starting and stopping

    def start(self, name: str, args: list[str], **env: str) -> Component:
        """``lineguard ARGS`` as a child process, its output in ``<log_dir>/<name>-<n>.log``."""
        comp = Component(args, {**self.env, **env}, self.log_dir / f"{name}-{len(self.components)}.log")
        comp.name = name  # type: ignore[attr-defined]  # for the logs a failed test prints
        self.components.append(comp)
        return comp

    def run(self, name: str, args: list[str], timeout_s: float = 600) -> str:
        """Run ``lineguard ARGS`` to completion and return its output; raise with its tail on failure."""
        comp = self.start(name, args)
        code = comp.wait(timeout_s)
        if code != 0:
            raise RuntimeError(f"{name} failed ({code}):\n{comp.tail(30)}")
        return comp.output()

    def processor(self, name: str = "processor", metrics_port: int | None = None, **env: str) -> Component:
        """A processor worker on every line (one member of the processors' group)."""
        if metrics_port:
            env["LINEGUARD_PROCESSOR__METRICS_PORT"] = str(metrics_port)
        return self.start(name, ["process", "--lines", ",".join(self.lines)], **env)

    def sink(self, kind: str, metrics_port: int | None = None, until_idle: float | None = None,
             **env: str) -> Component:
        """``lineguard sink clickhouse|heatmaps`` on every line, in :meth:`sink_group`."""
        args = ["sink", kind, "--lines", ",".join(self.lines), "--group", self.sink_group(kind)]
        if until_idle is not None:
            args += ["--until-idle", str(until_idle)]
        if metrics_port:
            env["LINEGUARD_SINKS__METRICS_PORT"] = str(metrics_port)
        return self.start(f"sink-{kind}", args, **env)

    def sink_group(self, kind: str) -> str:
        return f"{self.group}-sink-{kind}"

    def camera(self, line: str, camera: str, count: int, fps: float | None = None, size: int = 256,
               defect_rate: float = 0.1, seed: int = 0, first_index: int = 0, product: str = PRODUCT,
               **env: str) -> Component:
        """A synthetic camera (``lineguard produce --source synthetic``) sending frames ``first_index`` ..
        ``first_index + count - 1`` of its belt (``seed``) to ``line``. Its frames carry the ground truth
        in ``meta`` (``gt_defective``); the processor ignores it."""
        args = ["produce", "--line", line, "--camera", camera, "--product", product, "--source", "synthetic",
                "--count", str(count), "--size", str(size), "--defect-rate", str(defect_rate), "--seed", str(seed)]
        if first_index:
            args += ["--first-index", str(first_index)]
        if fps is not None:
            args += ["--fps", str(fps)]
        return self.start(f"produce-{camera}", args, **env)

    def wait_producers(self, producers: list[Component], timeout_s: float = 240) -> int:
        """Wait for the producers to exit 0 with failed=0; return the frames they delivered."""
        delivered = 0
        for prod in producers:
            code = prod.wait(timeout_s)
            summary = [line for line in prod.output().splitlines() if line.startswith("produce:")]
            if code != 0 or not summary:
                raise RuntimeError(f"producer {prod.args} exited {code}:\n{prod.tail(30)}")
            self.producer_stats.append(summary[-1])
            fields = dict(part.split("=", 1) for part in summary[-1].split()[1:] if "=" in part)
            if fields.get("failed") != "0":
                raise RuntimeError(f"producer lost frames: {summary[-1]}")
            delivered += int(fields["delivered"])
        return delivered

    def stop_all(self, timeout_s: float = 30) -> None:
        """SIGTERM every component still running: processors and sinks finish their batch and commit."""
        for comp in self.components:
            comp.stop(timeout=timeout_s)

    # ---- the lines' topics

    def frame_topics(self) -> list[str]:
        return [topics.frames(line) for line in self.lines]

    def verdict_topics(self) -> list[str]:
        return [topics.verdicts(line) for line in self.lines]

    def heatmap_topics(self) -> list[str]:
        return [topics.heatmaps(line) for line in self.lines]

    def count(self, topic_names: list[str]) -> int:
        from .kafka import count_messages

        return sum(count_messages(self.kafka, t) for t in topic_names)

    def scored(self) -> bool:
        """Whether the processors' group has committed every frame on the lines."""
        from .kafka import group_lag

        return group_lag(self.kafka, self.group, self.frame_topics()) == 0

    def sinks_caught_up(self) -> bool:
        """Whether both sinks' groups have committed every verdict and heatmap on the lines."""
        from .kafka import group_lag

        return (group_lag(self.kafka, self.sink_group("clickhouse"), self.verdict_topics())
                + group_lag(self.kafka, self.sink_group("heatmaps"), self.heatmap_topics())) == 0


# ---- measuring the children, from /proc

def status_kib(pid: int | str, field: str) -> int:
    """A memory field of ``/proc/<pid>/status`` in KiB (``VmRSS`` now, ``VmHWM`` the peak); ``pid`` may be
    ``"self"``. Raises OSError once the process is gone, KeyError if the field is missing."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def peak_rss_mib(pid: int | None) -> float:
    """Peak resident memory of a running process (VmHWM), MiB; 0 if it is gone."""
    if pid is None:
        return 0.0
    try:
        return status_kib(pid, "VmHWM") / 1024
    except OSError:
        return 0.0


def describe(components: Iterable[Component], lines: int = 25) -> str:
    """The last ``lines`` of each component's log, for a failure message."""
    return "\n".join(f"--- {getattr(c, 'name', c.args[0])} (pid {c.pid})\n" + c.tail(lines) for c in components)
