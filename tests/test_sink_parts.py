"""The sink runner's parts without a broker: the back-off policy, the commit tracker, the
stuck-consumer watchdog, and which write failures are permanent (against real stores where
the failure can be made real: chdb refusing a row, a folder refusing a key)."""

from __future__ import annotations

import dataclasses
import errno
import random
import sys
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from lineguard.backoff import Backoff
from lineguard.config import Settings
from lineguard.schemas import Heatmap, Reason, SchemaError
from lineguard.sinks.clickhouse import ClickHouseWriter
from lineguard.sinks.commits import CommitTracker
from lineguard.sinks.errors import PermanentWriteError, classified, is_permanent
from lineguard.sinks.heatmaps import HeatmapWriter
from lineguard.sinks.metrics import SinkMetrics
from lineguard.sinks.watchdog import StuckConsumerWatchdog
from lineguard.stores import LocalFolderStore, VerdictStore

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file
from sink_fixtures import chdb_http_url, make_verdicts, verdict_store  # noqa: E402,F401


# ---- back-off ------------------------------------------------------------------------------

def test_backoff_doubles_up_to_its_cap_and_jitters_within_the_upper_half() -> None:
    backoff = Backoff(initial_s=0.2, max_s=10.0, rng=random.Random(3))
    assert [backoff.ceiling(n) for n in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    assert backoff.ceiling(10_000) == 10.0  # no overflow on a long outage
    for attempt in range(12):
        delays = [backoff.delay(attempt) for _ in range(200)]
        ceiling = backoff.ceiling(attempt)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4, "no jitter"


def test_backoff_with_the_same_seed_repeats_and_refuses_non_positive_delays() -> None:
    first = [Backoff(0.05, 0.4, rng=random.Random(9)).delay(n) for n in range(6)]
    assert first == [Backoff(0.05, 0.4, rng=random.Random(9)).delay(n) for n in range(6)]
    assert Backoff(5.0, 1.0).ceiling(0) == 1.0  # an initial delay above the cap is capped
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


# ---- commit tracker and watchdog -------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeConsumer:
    """Records commits; ``poll`` answers the oldest commit still out, as the broker would."""

    def __init__(self, tracker: CommitTracker | None = None, refuse: bool = False) -> None:
        self.sent: list[list[tuple[str, int, int]]] = []
        self.tracker, self.refuse, self.polls = tracker, refuse, 0

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous, "the runner must never wait for a commit's answer"
        if self.refuse:
            raise KafkaException(KafkaError(KafkaError._NO_OFFSET, "nothing to commit"))
        self.sent.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def poll(self, timeout: float) -> None:
        self.polls += 1
        if self.tracker is not None and len(self.sent) > self.polls - 1:
            topic, partition, offset = self.sent[self.polls - 1][0]
            self.tracker.on_commit(None, [TopicPartition(topic, partition, offset)])


def test_commit_tracker_commits_exact_offsets_and_ages_the_oldest_unanswered() -> None:
    clock, metrics = Clock(), SinkMetrics()
    tracker = CommitTracker("test", metrics, clock=clock)
    consumer = FakeConsumer()
    tracker.commit(consumer, {})  # nothing written: nothing sent
    assert consumer.sent == [] and tracker.oldest_unanswered_s() is None

    tracker.commit(consumer, {("t", 0): 20, ("t", 1): 7})
    clock.now += 2
    tracker.commit(consumer, {("t", 0): 40})
    clock.now += 1
    assert consumer.sent == [[("t", 0, 20), ("t", 1, 7)], [("t", 0, 40)]]
    assert tracker.unanswered == 2 and tracker.oldest_unanswered_s() == 3.0

    tracker.on_commit(None, [TopicPartition("t", 0, 20), TopicPartition("t", 1, 7)])
    assert tracker.unanswered == 1 and tracker.oldest_unanswered_s() == 1.0  # the second one's age
    tracker.on_commit(KafkaError(KafkaError.REBALANCE_IN_PROGRESS), [TopicPartition("t", 0, 40)])
    assert (metrics.commits, metrics.commit_failures, tracker.unanswered) == (1, 1, 0)

    tracker.commit(FakeConsumer(refuse=True), {("t", 0): 41})  # refused at once: nothing out
    assert (metrics.commit_failures, tracker.unanswered) == (2, 0)
    tracker.commit(consumer, {("t", 0): 41})
    tracker.forget_unanswered()  # its consumer was replaced
    assert tracker.oldest_unanswered_s() is None


def test_commit_tracker_awaits_answers_by_polling_until_its_deadline() -> None:
    metrics = SinkMetrics()
    tracker = CommitTracker("test", metrics)
    consumer = FakeConsumer(tracker)
    for offset in (5, 9, 12):
        tracker.commit(consumer, {("t", 0): offset})
    tracker.await_answers(consumer, timeout_s=5, poll_slice_s=0.01)
    assert (tracker.unanswered, metrics.commits, consumer.polls) == (0, 3, 3)

    silent = FakeConsumer()  # a coordinator that never answers: the wait ends at its deadline
    tracker.commit(silent, {("t", 0): 13})
    tracker.await_answers(silent, timeout_s=0.05, poll_slice_s=0.01)
    assert tracker.unanswered == 1 and silent.polls >= 1


def test_watchdog_flags_a_missing_assignment_or_an_old_unanswered_commit() -> None:
    clock = Clock()
    tracker = CommitTracker("test", SinkMetrics(), clock=clock)
    watchdog = StuckConsumerWatchdog(30.0, tracker, clock=clock)
    assert watchdog.stuck() is None
    watchdog.unassigned()
    clock.now += 29
    assert watchdog.stuck() is None
    clock.now += 1
    assert "no partitions assigned for 30s" in watchdog.stuck()
    watchdog.assigned()  # even an empty assignment means the coordinator answered
    assert watchdog.stuck() is None

    tracker.commit(FakeConsumer(), {("t", 0): 1})
    clock.now += 31
    assert "a commit unanswered for 31s" in watchdog.stuck()
    tracker.forget_unanswered()
    watchdog.reset()
    assert watchdog.stuck() is None


# ---- which failures are permanent -------------------------------------------------------------

def _s3_error(code: str) -> Exception:
    from minio.error import S3Error

    return S3Error(None, code, f"{code} from the test", "/bucket/key", "req", "host")  # type: ignore[arg-type]


@pytest.mark.parametrize(("error", "permanent"), [
    (RuntimeError("Code: 53. DB::Exception: Type mismatch in IN or VALUES section. (TYPE_MISMATCH)"), True),
    (RuntimeError("Code: 469. DB::Exception: Constraint `c` is violated at row 2. (VIOLATED_CONSTRAINT)"), True),
    (RuntimeError("Code: 241. DB::Exception: Memory limit (total) exceeded. (MEMORY_LIMIT_EXCEEDED)"), False),
    (RuntimeError("Code: 60. DB::Exception: Table lineguard.verdicts does not exist. (UNKNOWN_TABLE)"), False),
    (RuntimeError("(TYPE_MISMATCH) in a message that is not from ClickHouse"), False),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), False),
    (TimeoutError("timed out"), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (OSError(errno.ENAMETOOLONG, "File name too long"), True),
    (OverflowError("int too big to convert"), True),
    (SchemaError(Reason.INVALID_FIELD, "bad field"), True),
    (KafkaException(KafkaError(KafkaError._TRANSPORT)), False),
])
def test_failures_are_classified(error: Exception, permanent: bool) -> None:
    assert is_permanent(error) is permanent


@pytest.mark.parametrize(("code", "permanent"), [
    ("SlowDown", False), ("InternalError", False), ("ServiceUnavailable", False), ("AccessDenied", False),
    ("InvalidObjectName", True), ("KeyTooLongError", True), ("EntityTooLarge", True),
])
def test_s3_errors_are_classified_by_code(code: str, permanent: bool) -> None:
    assert is_permanent(_s3_error(code)) is permanent


def test_classified_raises_permanent_failures_with_a_reason_and_leaves_the_rest() -> None:
    with pytest.raises(PermanentWriteError) as caught, classified("storing k"):
        raise OSError(errno.EISDIR, "Is a directory")
    assert caught.value.reason == "write_rejected" and "storing k: IsADirectoryError" in str(caught.value)
    with pytest.raises(PermanentWriteError) as caught, classified("decode"):
        raise SchemaError(Reason.INVALID_FIELD, "bad")
    assert caught.value.reason == "invalid_field"  # a SchemaError keeps its own reason
    with pytest.raises(ConnectionError), classified("insert"):
        raise ConnectionError("the server went away")


def test_clickhouse_writer_turns_a_row_clickhouse_refuses_into_a_permanent_error(
    verdict_store: VerdictStore, tmp_path: Path
) -> None:
    """On both backends: chdb raises the engine's error, clickhouse-connect the server's answer."""
    writer = ClickHouseWriter(Settings(state_dir=tmp_path / "state"), verdict_store)
    verdict_store.execute(
        f"ALTER TABLE {verdict_store.database}.verdicts ADD CONSTRAINT score_in_range CHECK score <= 1")
    good, bad = make_verdicts(2, lines=("lineA",))
    writer.write([good])
    with pytest.raises(PermanentWriteError) as caught:
        writer.write([dataclasses.replace(bad, score=5.0)])
    assert "VIOLATED_CONSTRAINT" in str(caught.value)
    assert verdict_store.count_frames() == 1


def test_heatmap_writer_turns_a_key_the_folder_cannot_hold_into_a_permanent_error(tmp_path: Path) -> None:
    writer = HeatmapWriter(Settings(state_dir=tmp_path / "state"), LocalFolderStore(tmp_path / "heatmaps"))
    nested = Heatmap(frame_id="f1", line_id="lineA", key="lineA/2024/f1.png", content_type="image/png",
                     data=b"png", captured_at_ns=1)
    writer.write([nested])
    # "lineA/2024" is a directory now: no object can ever be stored under that key.
    clash = dataclasses.replace(nested, frame_id="f2", key="lineA/2024")
    with pytest.raises(PermanentWriteError) as caught:
        writer.write([clash])
    assert "lineA/2024" in str(caught.value)
    assert (tmp_path / "heatmaps" / "lineA/2024/f1.png").read_bytes() == b"png"
