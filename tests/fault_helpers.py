"""Helpers for the fault-injection tests (tests/test_faults.py and friends).

A :class:`FaultPipeline` is the local-pipeline harness (``lineguard.harness``)
on lines of its own on the test stack, with the fault tests' settings, and counts
every frame at the end: frames in the frame topics, verdict messages and the
distinct frames they cover, dead letters from its topics, ClickHouse rows
(``FINAL``) and duplicate rows. Nothing here fakes a service: faults are made
by really stopping or killing processes.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from lineguard.components import Component
from lineguard.config import KafkaConfig
from lineguard.harness import LocalPipeline, describe, status_kib, wait_for
from lineguard.kafka import cameras_for_partitions, ensure_topics, read_topic
from lineguard.schemas import DeadLetter, Frame, Verdict, topics
from lineguard.stores import ChdbStore, VerdictStore

from pipeline_helpers import read_topics


def fit_fault_models(root: Path) -> Path:
    """A baseline model for the synthetic washer under ``root``; returns its folder of model folders."""
    from lineguard.engines.training import train
    from lineguard.producers.synthetic import SyntheticCamera

    data = root / "data"
    SyntheticCamera(product="washer", size=128, seed=1).write_mvtec(data, n_train=30, n_test_good=2, n_test_defect=2)
    train("baseline", data, root / "models" / "washer", name="washer", version="faults")
    return root / "models"


def log_text(comp: Component) -> str:
    """A component's output so far (also after it was stopped)."""
    return comp.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int, timeout_s: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the real ``/metrics`` endpoint on ``port``: {(name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def try_scrape_sum(port: int, name: str, **labels: str) -> float | None:
    try:
        return metric_sum(scrape(port), name, **labels)
    except OSError:
        return None


def assigned_partitions(port: int) -> set[tuple[str, str]]:
    """The partitions a processor reports lag for on /metrics: the ones it holds now."""
    try:
        samples = scrape(port)
    except OSError:
        return set()
    return {(dict(labels)["topic"], dict(labels)["partition"]) for (name, labels) in samples
            if name == "lineguard_processor_consumer_lag"}


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` from /proc/<pid>/status (VmRSS, KiB)."""
    return status_kib(pid, "VmRSS")


@dataclass
class Tally:
    """The end-of-test accounting of one pipeline run."""

    fault: str
    sent: int                       # frames the producers had acknowledged
    in_topics: int                  # frame messages in the lines' frame topics
    verdicts: int                   # verdict messages (replays after a crash included)
    verdict_frames: int             # distinct frames with at least one verdict
    rows: int                       # ClickHouse rows, FINAL
    deadletter: int                 # dead letters whose source is one of the lines' frame topics
    lost: int                       # frames with neither a verdict nor a dead letter, or without a row
    duplicate_rows: int             # FINAL rows beyond one per frame
    extra: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        text = (f"fault={self.fault} sent={self.sent} verdicts={self.verdicts} rows={self.rows} "
                f"deadletter={self.deadletter} lost={self.lost} duplicate_rows={self.duplicate_rows}")
        details = {"in_topics": self.in_topics, "verdict_frames": self.verdict_frames, **self.extra}
        return text + " " + " ".join(f"{k}={v}" for k, v in details.items())


class FaultPipeline(LocalPipeline):
    """Lines of its own on the shared stack; components as real processes; logs under ``root``."""

    def __init__(self, stack, root: Path, models: Path, name: str, kafka: KafkaConfig | None = None,  # noqa: ANN001
                 **env: str) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name = name
        self.root = root
        self.state = root / "state"
        self.models = models
        self.stack = stack
        super().__init__(
            kafka or KafkaConfig(bootstrap_servers=stack.kafka_bootstrap),  # the test's own client settings
            self.state, [f"{name[:8]}{tag}-a", f"{name[:8]}{tag}-b"], group=f"processors-{tag}", log_dir=root,
            model_dir=models,
            LINEGUARD_PROCESSOR__LAG_REPORT_S="1",
            LINEGUARD_SINKS__FLUSH_INTERVAL_MS="300",
            LINEGUARD_SINKS__LAG_REPORT_S="1",
            LINEGUARD_SINKS__RETRY_INITIAL_MS="100",
            LINEGUARD_SINKS__RETRY_MAX_MS="1500",
            **env,
        )
        ensure_topics(self.kafka, self.lines)

    def producers(self, count: int, fps: float, size: int = 128, cameras_per_line: int = 1,
                  **env: str) -> list[Component]:
        """``lineguard produce`` per camera: ``cameras_per_line`` cameras on each line, whose ids are
        chosen to hash to different partitions (the key is the camera id), ``count`` frames each."""
        return [self.camera(line, camera, count, fps=fps, size=size, defect_rate=0.2, seed=20 + 10 * i + j, **env)
                for i, line in enumerate(self.lines)
                for j, camera in enumerate(cameras_for_partitions(line, cameras_per_line, self.kafka.frame_partitions))]

    def delete_topics(self) -> None:
        """Remove the lines' topics (the back-pressure test leaves hundreds of MB of frames)."""
        from lineguard.kafka import admin_client

        admin = admin_client(self.kafka)  # kept referenced until the futures resolve
        futures = admin.delete_topics(self.frame_topics() + self.verdict_topics() + self.heatmap_topics(),
                                      operation_timeout=30)
        for future in futures.values():
            future.result(timeout=60)
        del admin

    def group_members(self) -> str:
        """The processors' group as the broker sees it: state and each member's partitions."""
        from lineguard.kafka import admin_client

        try:
            admin = admin_client(self.kafka)
            group = admin.describe_consumer_groups([self.group])[self.group].result(timeout=10)
            members = "; ".join(f"{m.member_id[-8:]}@{m.host}: " + ",".join(
                f"{tp.topic[-2:]}[{tp.partition}]" for tp in m.assignment.topic_partitions) for m in group.members)
            return f"group {self.group} {group.state}: {members}"
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"group {self.group}: {exc}"

    def logs(self) -> str:
        return self.group_members() + "\n" + describe(self.components)

    # ---- counting

    def frames_in_topics(self) -> list[tuple[tuple[str, int, int], Frame | None]]:
        """Every message of the frame topics with its (topic, partition, offset); None if not a Frame."""
        return [((r.topic, r.partition, r.offset), _frame_or_none(r.value))
                for r in read_topic(self.kafka, self.frame_topics())]

    def verdicts(self, expect: int) -> list[Verdict]:
        return read_topics(self.kafka, self.verdict_topics(), Verdict.decode, expect=expect, timeout_s=90, settle_s=1)

    def dead_letters(self) -> list[DeadLetter]:
        mine = set(self.frame_topics())
        letters = read_topics(self.kafka, [topics.DEADLETTER], DeadLetter.decode, expect=0, timeout_s=30, settle_s=2)
        return [d for d in letters if d.source_topic in mine]

    def wait_all_scored(self, expected: int, timeout_s: float, what: str = "every frame scored") -> None:
        """Until the processors' group has committed every frame and ``expected`` frames have an outcome."""
        def done() -> bool:
            return self.scored() and self.count(self.verdict_topics()) >= expected
        try:
            wait_for(done, timeout_s, what, interval_s=1.0)
        except TimeoutError:
            raise AssertionError(f"{what}: timed out\n{self.logs()}") from None

    def wait_sink_caught_up(self, group: str, topic_names: list[str], timeout_s: float) -> None:
        from lineguard.kafka import group_lag

        try:
            wait_for(lambda: group_lag(self.kafka, group, topic_names) == 0, timeout_s,
                     f"sink group {group} to commit everything", interval_s=1.0)
        except TimeoutError:
            raise AssertionError(f"sink {group} did not catch up\n{self.logs()}") from None

    def tally(self, fault: str, sent: int, store: VerdictStore | None = None,
              sent_ids: set[str] | None = None, **extra: int) -> Tally:
        """Count everything; ``store`` (default: the chdb under the state dir) holds the sink's rows.

        ``sent_ids``: the frame ids the test produced itself, so the frame topics need not be
        read back (they can hold gigabytes); their message count is still checked."""
        letters = self.dead_letters()
        letter_positions = {(d.source_topic, d.partition, d.offset) for d in letters}
        if sent_ids is None:
            messages = self.frames_in_topics()
            in_topics = len(messages)
            # A message is accounted for by a dead letter naming its position, or else must be a frame.
            frame_ids = {f.frame_id for pos, f in messages if f is not None and pos not in letter_positions}
            unaccounted = sum(1 for pos, f in messages if f is None and pos not in letter_positions)
        else:
            frame_ids = set(sent_ids)
            in_topics = self.count(self.frame_topics())
            unaccounted = 0
        verdicts = self.verdicts(expect=len(frame_ids))
        verdict_ids = Counter(v.frame_id for v in verdicts)
        own = store is None
        store = store or ChdbStore(self.state / "chdb")
        lines_sql = ", ".join(f"'{topics.check_line_id(line)}'" for line in self.lines)  # safe characters only
        try:
            rows = store.query(f"SELECT count() AS rows, uniqExact(frame_id) AS frames "
                               f"FROM {store.database}.verdicts FINAL WHERE line_id IN ({lines_sql})")
            row_ids = {r["frame_id"] for r in store.query(
                f"SELECT DISTINCT frame_id FROM {store.database}.verdicts WHERE line_id IN ({lines_sql})")}
        finally:
            if own:
                store.close()
        n_rows, n_row_frames = int(rows[0]["rows"]), int(rows[0]["frames"])
        lost = unaccounted + len(frame_ids - (set(verdict_ids) & row_ids))  # no verdict, or no row
        return Tally(
            fault=fault, sent=sent, in_topics=in_topics, verdicts=len(verdicts),
            verdict_frames=len(set(verdict_ids) & frame_ids), rows=n_rows, deadletter=len(letters),
            lost=lost, duplicate_rows=n_rows - n_row_frames,
            extra={"replayed_verdicts": sum(n - 1 for n in verdict_ids.values()), **extra},
        )


def _frame_or_none(data: bytes) -> Frame | None:
    from lineguard.schemas import SchemaError

    try:
        return Frame.decode(data)
    except SchemaError:
        return None


class ChdbHttpServer:
    """tests/chdb_http.py (ClickHouse's HTTP interface over chdb) as a process that can be
    stopped and started again on the same port and data path, to take ClickHouse away for real."""

    SCRIPT = Path(__file__).with_name("chdb_http.py")

    def __init__(self, path: Path, log_path: Path) -> None:
        self.path = path
        self.port = free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> None:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, str(self.SCRIPT), "--path", str(self.path),
                                      "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chdb HTTP fixture exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"chdb HTTP fixture did not answer within {timeout_s:.0f}s")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None


def committed(kafka: KafkaConfig, group: str, topic_names: list[str]) -> dict[tuple[str, int], int]:
    """The group's committed offsets on every partition of ``topic_names`` (negative: none)."""
    from lineguard.kafka import committed_offsets

    return committed_offsets(kafka, group, topic_names)
