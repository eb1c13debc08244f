"""The sinks against the real local stack: Kafka broker (+ versitygw S3 for heatmaps).

Each test uses its own line ids (so its own topics) and its own consumer group,
so tests neither see each other's messages nor each other's committed offsets.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from lineguard import kafka as kafka_admin
from lineguard.config import Settings
from lineguard.schemas import DeadLetter, Heatmap, Verdict, topics
from lineguard.sinks.clickhouse import ClickHouseWriter
from lineguard.sinks.heatmaps import HeatmapWriter
from lineguard.sinks.runner import SinkRunner
from lineguard.stores import ChdbStore, S3Store, VerdictStore, open_object_store

sys.path.insert(0, str(Path(__file__).parent))  # the helper modules beside this file
from sink_fixtures import chdb_http_url, make_verdicts, verdict_store  # noqa: E402,F401

pytestmark = pytest.mark.kafka

IDLE_S = 3.0


def _lines(n: int = 2) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"sinkt{tag}{chr(ord('a') + i)}" for i in range(n)]


def _group(kind: str) -> str:
    return f"lineguard-sink-{kind}-test-{uuid.uuid4().hex[:8]}"


def _produce(settings: Settings, messages: list[tuple[str, bytes | None, bytes]]) -> None:
    """(topic, key, value) triples, flushed before returning."""
    producer = kafka_admin.producer_client(settings.kafka)
    failures: list[str] = []
    for topic, key, value in messages:
        producer.produce(topic, value=value, key=key,
                         on_delivery=lambda err, _msg: failures.append(str(err)) if err else None)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failures, failures


def _produce_verdicts(settings: Settings, verdicts: list[Verdict]) -> None:
    # Keyed by frame so both partitions of each topic get messages.
    _produce(settings, [(topics.verdicts(v.line_id), v.frame_id.encode(), v.encode()) for v in verdicts])


def _committed(settings: Settings, group: str, topic_names: list[str]) -> dict[tuple[str, int], int]:
    """The group's committed offsets (negative: nothing committed), read without joining it.

    An empty partition never gets a commit; the comparisons below use :func:`_fully_committed`."""
    return kafka_admin.committed_offsets(settings.kafka, group, topic_names)


def _fully_committed(settings: Settings, group: str, topic_names: list[str]) -> bool:
    ends = _end_offsets(settings, topic_names)
    committed = _committed(settings, group, topic_names)
    assert set(committed) == set(ends)
    return all(committed[k] == end or (end == 0 and committed[k] < 0) for k, end in ends.items())


def _end_offsets(settings: Settings, topic_names: list[str]) -> dict[tuple[str, int], int]:
    return {
        (name, p): high
        for name in topic_names
        for p, high in kafka_admin.topic_end_offsets(settings.kafka, name).items()
    }


def _dead_letters_from(settings: Settings, source_topics: set[str]) -> list[DeadLetter]:
    """Every dead letter whose source is one of ``source_topics`` (the topic is shared)."""
    letters = (DeadLetter.decode(r.value) for r in kafka_admin.read_topic(settings.kafka, topics.DEADLETTER, 30))
    return [letter for letter in letters if letter.source_topic in source_topics]


@pytest.fixture
def sink_settings(settings: Settings) -> Settings:
    """The stack's settings with batching small enough to exercise several batches."""
    settings.sinks.batch_size = 64
    settings.sinks.flush_interval_ms = 200
    settings.sinks.retry_initial_ms = 50
    settings.sinks.retry_max_ms = 400
    return settings


def test_clickhouse_sink_writes_collapses_replays_and_dead_letters_garbage(
    sink_settings: Settings, verdict_store: VerdictStore
) -> None:
    settings = sink_settings
    lines = _lines()
    kafka_admin.ensure_topics(settings.kafka, lines)
    verdicts = make_verdicts(200, lines=tuple(lines))
    verdict_topics = [topics.verdicts(line) for line in lines]
    group = _group("clickhouse")
    _produce_verdicts(settings, verdicts)

    metrics = SinkRunner(settings, ClickHouseWriter(settings, verdict_store), lines=lines,
                         group_id=group).run(idle_exit_s=IDLE_S)
    assert (metrics.written, metrics.dead_lettered, metrics.retries) == (200, 0, 0)
    assert verdict_store.count_frames() == 200
    assert _fully_committed(settings, group, verdict_topics)
    assert metrics.total_lag == 0

    # Replay every verdict, plus one message that is not msgpack at all.
    garbage = b"\xc1 this is not msgpack"
    _produce_verdicts(settings, verdicts)
    _produce(settings, [(verdict_topics[0], b"cam-x", garbage)])
    metrics = SinkRunner(settings, ClickHouseWriter(settings, verdict_store), lines=lines,
                         group_id=group).run(idle_exit_s=IDLE_S)
    assert (metrics.written, metrics.dead_lettered) == (200, 1)
    assert verdict_store.count_frames() == 200  # replays collapsed
    assert _fully_committed(settings, group, verdict_topics)

    dead = _dead_letters_from(settings, set(verdict_topics))
    assert len(dead) == 1
    assert dead[0].reason == "malformed"
    assert dead[0].raw == garbage
    assert dead[0].line_id == lines[0]
    assert dead[0].component == "sink-clickhouse"


class FlakyChdbStore(ChdbStore):
    """Failure injection: the real chdb store, except that chosen insert calls raise first."""

    def __init__(self, path: Path, fail_calls: set[int], on_failure=None) -> None:  # noqa: ANN001
        super().__init__(path)
        self.fail_calls = fail_calls
        self.calls = 0
        self.on_failure = on_failure

    def insert_verdicts(self, verdicts):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls in self.fail_calls:
            if self.on_failure is not None:
                self.on_failure()
            raise ConnectionError(f"injected failure on insert call {self.calls}")
        return super().insert_verdicts(verdicts)


def test_failed_writes_are_retried_and_nothing_is_committed_until_they_succeed(
    sink_settings: Settings, tmp_path: Path
) -> None:
    settings = sink_settings
    settings.sinks.batch_size = 1000  # one batch: the first K writes are all of it
    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)
    verdict_topics = [topics.verdicts(lines[0])]
    group = _group("clickhouse")
    _produce_verdicts(settings, make_verdicts(50, lines=tuple(lines)))

    committed_during_failures: list[dict] = []
    store = FlakyChdbStore(
        tmp_path / "chdb", fail_calls={1, 2, 3},
        on_failure=lambda: committed_during_failures.append(_committed(settings, group, verdict_topics)),
    )
    try:
        sink = SinkRunner(settings, ClickHouseWriter(settings, store), lines=lines, group_id=group)
        metrics = sink.run(idle_exit_s=IDLE_S)
        assert metrics.retries == 3
        assert metrics.written == 50
        assert store.count_frames() == 50
        assert len(committed_during_failures) == 3
        for committed in committed_during_failures:
            assert all(offset < 0 for offset in committed.values()), committed  # nothing yet
        assert _fully_committed(settings, group, verdict_topics)
    finally:
        store.close()


def test_rows_the_store_refuses_for_good_are_dead_lettered_and_the_rest_is_written(
    sink_settings: Settings, tmp_path: Path
) -> None:
    """A permanent error (a CHECK constraint ClickHouse enforces: a score above 1) is not retried:
    the refused verdicts go to the dead-letter topic with the store's reason, every other verdict of
    the same batches is written, and every offset is committed (each dead letter confirmed first)."""
    settings = sink_settings  # batches of 64: the refused verdicts fall in different batches
    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)
    verdict_topics = [topics.verdicts(lines[0])]
    group = _group("clickhouse")
    refused = {5, 71, 140}
    verdicts = [dataclasses.replace(v, score=5.0) if i in refused else v
                for i, v in enumerate(make_verdicts(150, lines=tuple(lines)))]
    _produce_verdicts(settings, verdicts)

    store = ChdbStore(tmp_path / "chdb")
    try:
        writer = ClickHouseWriter(settings, store)  # creates the schema
        store.execute(f"ALTER TABLE {store.database}.verdicts ADD CONSTRAINT score_in_range CHECK score <= 1")
        metrics = SinkRunner(settings, writer, lines=lines, group_id=group).run(idle_exit_s=IDLE_S)
        assert (metrics.written, metrics.dead_lettered, metrics.retries) == (147, 3, 0)
        stored = store.query(f"SELECT frame_id FROM {store.database}.verdicts FINAL")
        assert {row["frame_id"] for row in stored} == {v.frame_id for i, v in enumerate(verdicts) if i not in refused}
        assert _fully_committed(settings, group, verdict_topics)
        assert metrics.total_lag == 0
    finally:
        store.close()

    dead = _dead_letters_from(settings, set(verdict_topics))
    assert sorted(d.frame_id for d in dead) == sorted(verdicts[i].frame_id for i in refused)
    for letter in dead:
        assert (letter.reason, letter.component, letter.line_id) == ("write_rejected", "sink-clickhouse", lines[0])
        assert "VIOLATED_CONSTRAINT" in letter.error
        assert Verdict.decode(letter.raw).score == 5.0  # the message itself, as it came


def test_commits_cover_exactly_the_batches_written(sink_settings: Settings, tmp_path: Path) -> None:
    settings = sink_settings
    settings.sinks.batch_size = 20
    settings.sinks.flush_interval_ms = 60_000  # batches close on size only (and at exit)
    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)
    verdict_topics = [topics.verdicts(lines[0])]
    group = _group("clickhouse")
    _produce_verdicts(settings, make_verdicts(50, lines=tuple(lines)))

    committed_during_failures: list[dict] = []
    store = FlakyChdbStore(  # the second batch fails twice
        tmp_path / "chdb", fail_calls={2, 3},
        on_failure=lambda: committed_during_failures.append(_committed(settings, group, verdict_topics)),
    )
    try:
        sink = SinkRunner(settings, ClickHouseWriter(settings, store), lines=lines, group_id=group)
        metrics = sink.run(idle_exit_s=IDLE_S)
        assert (metrics.retries, metrics.written) == (2, 50)
        assert store.count_frames() == 50
        # While batch 2 was failing, exactly batch 1's 20 messages were committed.
        assert [sum(max(o, 0) for o in c.values()) for c in committed_during_failures] == [20, 20]
        assert _fully_committed(settings, group, verdict_topics)
    finally:
        store.close()


def test_stop_while_the_store_is_down_commits_nothing(sink_settings: Settings, tmp_path: Path) -> None:
    settings = sink_settings
    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)
    verdict_topics = [topics.verdicts(lines[0])]
    group = _group("clickhouse")
    _produce_verdicts(settings, make_verdicts(30, lines=tuple(lines)))

    store = FlakyChdbStore(tmp_path / "chdb", fail_calls=set(range(1, 10_000)))
    stop = threading.Event()
    sink = SinkRunner(settings, ClickHouseWriter(settings, store), lines=lines, group_id=group)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(m=sink.run(stop_event=stop)))
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while sink.metrics.retries < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.metrics.retries >= 3, "the sink never retried"
        stop.set()
        runner.join(timeout=30)
        assert not runner.is_alive(), "stop did not end the retry loop"
        assert result["m"].written == 0
        assert all(o < 0 for o in _committed(settings, group, verdict_topics).values())
        assert store.count_frames() == 0
    finally:
        stop.set()
        runner.join(timeout=30)
        store.close()


def _one_line_sink(settings: Settings, tmp_path: Path, runner_class: type[SinkRunner] = SinkRunner,  # noqa: ANN202
                   writer_class: type[ClickHouseWriter] = ClickHouseWriter):
    """A ``runner_class`` sink running a ``writer_class`` on one new line, its own group and a chdb
    store, with 20 of 40 verdicts already produced: (sink, store, stop event, runner thread not
    started, the 40 verdicts)."""
    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)
    verdicts = make_verdicts(40, lines=tuple(lines))
    _produce_verdicts(settings, verdicts[:20])
    store = ChdbStore(tmp_path / "chdb")
    stop = threading.Event()
    sink = runner_class(settings, writer_class(settings, store), lines=lines, group_id=_group("clickhouse"))
    runner = threading.Thread(target=lambda: sink.run(stop_event=stop))
    return sink, store, stop, runner, verdicts


class _UnsubscribingRunner(SinkRunner):
    """Once ``strike`` is set, its consumer unsubscribes in the sink's own loop (librdkafka serves
    rebalances on the polling thread): revoked, and no assignment will ever come to it."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002,ANN003
        super().__init__(*args, **kwargs)
        self.strike, self.struck = threading.Event(), threading.Event()

    def _maybe_measure_lag(self) -> None:
        if self.strike.is_set() and not self.struck.is_set():
            self.member.consumer.unsubscribe()
            self.struck.set()
        super()._maybe_measure_lag()


def test_a_consumer_left_without_an_assignment_is_replaced(sink_settings: Settings, tmp_path: Path) -> None:
    """After a broker restart librdkafka once revoked a sink's partitions and never rejoined (its
    coordinator request stuck in the queue). Here the consumer is really left without an assignment
    (unsubscribed in the sink's loop); the sink must notice, open a new consumer, and write the rest,
    each message once."""
    settings = sink_settings
    settings.sinks.rejoin_timeout_s = 3.0
    sink, store, stop, runner, verdicts = _one_line_sink(settings, tmp_path, runner_class=_UnsubscribingRunner)
    group, verdict_topics = sink.group_id, sink.subscription
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while sink.metrics.written < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.metrics.written == 20 and sink.metrics.reopens == 0
        sink.strike.set()
        assert sink.struck.wait(30)
        _produce_verdicts(settings, verdicts[20:])
        deadline = time.monotonic() + 60
        while not (sink.metrics.written == 40 and _fully_committed(settings, group, verdict_topics)) \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sink.metrics.reopens == 1
        assert sink.metrics.written == 40 and _fully_committed(settings, group, verdict_topics)
    finally:
        stop.set()
        runner.join(timeout=30)
    try:
        assert store.count_frames() == 40
    finally:
        store.close()


class _GatedWriter(ClickHouseWriter):
    """The first write holding a verdict of the second half (``seq >= 20``, produced by the test after the
    first 20 are stored) waits for ``go`` and says so with ``writing``, so the test can make the group
    coordinator stop answering right before that batch's commit is sent. Keyed on the batch's content,
    not on a count of writes: a loaded machine may store the first 20 in several batches."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002,ANN003
        super().__init__(*args, **kwargs)
        self.writing, self.go = threading.Event(), threading.Event()

    def write(self, batch: list[Verdict]) -> None:
        if not self.writing.is_set() and any(v.seq >= 20 for v in batch):
            self.writing.set()
            assert self.go.wait(60)
        super().write(batch)


def test_a_consumer_whose_commits_go_unanswered_is_replaced(
    sink_settings: Settings, stack, tmp_path: Path  # noqa: ANN001
) -> None:
    """The broker is frozen (SIGSTOP) right before a commit: the commit is never answered. A
    synchronous commit would hold the sink's loop until the broker thaws (librdkafka waits without
    limit, and so does its close); the loop must instead notice within ``rejoin_timeout_s`` and
    replace the consumer, and after the thaw every message is stored once and committed."""
    settings = sink_settings
    settings.sinks.rejoin_timeout_s = 3.0
    sink, store, stop, runner, verdicts = _one_line_sink(settings, tmp_path, writer_class=_GatedWriter)
    group, verdict_topics = sink.group_id, sink.subscription
    broker = stack.local.running("kafka")
    assert broker is not None
    frozen_for = None
    try:
        runner.start()
        deadline = time.monotonic() + 60
        while not (sink.metrics.written == 20 and _fully_committed(settings, group, verdict_topics)) \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.metrics.written == 20
        _produce_verdicts(settings, verdicts[20:])
        assert sink.writer.writing.wait(30)
        os.kill(broker, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            sink.writer.go.set()
            while sink.metrics.reopens == 0 and time.monotonic() - frozen_at < 20:
                time.sleep(0.1)
            frozen_for = time.monotonic() - frozen_at
        finally:
            os.kill(broker, signal.SIGCONT)
        print(f"commit unanswered: {frozen_for:.1f}s into the broker freeze "
              f"(reopens={sink.metrics.reopens})")
        assert sink.metrics.reopens == 1
        deadline = time.monotonic() + 90
        while not _fully_committed(settings, group, verdict_topics) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _fully_committed(settings, group, verdict_topics)
        print(f"after the thaw: written={sink.metrics.written} (replays collapse), all offsets committed")
        assert sink.metrics.written >= 40
    finally:
        sink.writer.go.set()
        stop.set()
        runner.join(timeout=60)
    assert not runner.is_alive()
    try:
        assert store.count_frames() == 40
    finally:
        store.close()


@pytest.mark.s3
def test_heatmap_sink_stores_pngs_in_s3_under_their_keys(sink_settings: Settings, stack) -> None:  # noqa: ANN001
    from minio import Minio

    settings = sink_settings
    lines = _lines()
    kafka_admin.ensure_topics(settings.kafka, lines)
    heatmaps = []
    for i in range(30):
        line = lines[i % 2]
        frame_id = uuid.uuid4().hex
        captured = 1_714_978_800 * 10**9 + i * 3600 * 10**9  # spans two days
        png = b"\x89PNG\r\n\x1a\n" + frame_id.encode() * 8
        heatmaps.append(Heatmap(frame_id=frame_id, line_id=line, key=topics.heatmap_key(line, frame_id, captured),
                                content_type="image/png", data=png, captured_at_ns=captured))
    hostile = Heatmap(frame_id="evil", line_id=lines[0], key=f"{lines[0]}/../../escape.png",
                      content_type="image/png", data=b"x", captured_at_ns=1)
    _produce(settings, [(topics.heatmaps(h.line_id), h.frame_id.encode(), h.encode()) for h in heatmaps + [hostile]])

    settings.sinks.object_store.backend = "s3"  # the conftest points it at the stack's S3
    store = open_object_store(settings)
    assert isinstance(store, S3Store)
    bucket = settings.sinks.object_store.bucket
    group = _group("heatmaps")
    metrics = SinkRunner(settings, HeatmapWriter(settings, store), lines=lines, group_id=group).run(idle_exit_s=IDLE_S)
    assert (metrics.written, metrics.dead_lettered) == (30, 1)

    client = Minio(stack.s3_endpoint.split("://")[-1], access_key=stack.s3_access_key,
                   secret_key=stack.s3_secret_key, secure=False)
    stored = {o.object_name for o in client.list_objects(bucket, recursive=True)}
    assert stored == {h.key for h in heatmaps}
    for heatmap in heatmaps[:5]:
        assert client.stat_object(bucket, heatmap.key).content_type == "image/png"
        assert client.get_object(bucket, heatmap.key).read() == heatmap.data

    dead = _dead_letters_from(settings, {topics.heatmaps(line) for line in lines})
    assert [(d.reason, d.component) for d in dead] == [("invalid_field", "sink-heatmaps")]

    # Replay: the same messages again overwrite the same keys, nothing new appears.
    metrics = SinkRunner(settings, HeatmapWriter(settings, store), lines=lines,
                         group_id=_group("heatmaps")).run(idle_exit_s=IDLE_S)
    assert metrics.written == 30
    assert {o.object_name for o in client.list_objects(bucket, recursive=True)} == stored


def test_cli_heatmap_sink_to_local_folder_prints_the_summary(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from lineguard.cli import main

    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)
    captured = 1_714_978_800 * 10**9
    heatmaps = [
        Heatmap(frame_id=f"f{i}", line_id=lines[0], key=topics.heatmap_key(lines[0], f"f{i}", captured),
                content_type="image/png", data=b"png%d" % i, captured_at_ns=captured)
        for i in range(12)
    ]
    _produce(settings, [(topics.heatmaps(h.line_id), None, h.encode()) for h in heatmaps] +
             [(topics.heatmaps(lines[0]), None, b"")])  # empty value: malformed
    state = tmp_path / "state"
    monkeypatch.setenv("LINEGUARD_STATE_DIR", str(state))
    monkeypatch.setenv("LINEGUARD_KAFKA__BOOTSTRAP_SERVERS", settings.kafka.bootstrap_servers)
    monkeypatch.setenv("LINEGUARD_SINKS__OBJECT_STORE__BACKEND", "local")

    assert main(["sink", "heatmaps", "--lines", lines[0], "--until-idle", str(IDLE_S)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "sink: kind=heatmaps written=12 deadletter=1 retries=0"
    for h in heatmaps:
        assert (state / "heatmaps" / h.key).read_bytes() == h.data


class SlowChdbStore(ChdbStore):
    """The real chdb store, slowed down so a rebalance lands while batches are in flight."""

    def insert_verdicts(self, verdicts):  # noqa: ANN001, ANN201
        time.sleep(0.1)
        return super().insert_verdicts(verdicts)


def test_rebalance_flushes_and_commits_before_partitions_move(sink_settings: Settings, tmp_path: Path) -> None:
    settings = sink_settings
    settings.sinks.batch_size = 10
    settings.sinks.flush_interval_ms = 60_000
    lines = _lines(1)
    kafka_admin.ensure_topics(settings.kafka, lines)  # two partitions: one for each sink after the rebalance
    verdict_topics = [topics.verdicts(lines[0])]
    group = _group("clickhouse")
    _produce_verdicts(settings, make_verdicts(600, lines=tuple(lines)))

    store = SlowChdbStore(tmp_path / "chdb")  # chdb sessions are thread-safe; both sinks share it
    first = SinkRunner(settings, ClickHouseWriter(settings, store), lines=lines, group_id=group)
    second = SinkRunner(settings, ClickHouseWriter(settings, store), lines=lines, group_id=group)
    results: dict[str, object] = {}
    threads = [threading.Thread(target=lambda: results.update(first=first.run(idle_exit_s=IDLE_S)))]
    try:
        threads[0].start()
        deadline = time.monotonic() + 60
        while first.metrics.written < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.metrics.written >= 20
        threads.append(threading.Thread(target=lambda: results.update(second=second.run(idle_exit_s=IDLE_S))))
        threads[1].start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive()
        assert first.metrics.revocations >= 1, "the second sink never caused a rebalance"
        assert second.metrics.written > 0, "the second sink got no partition"
        # The first sink flushed and committed on revoke, so nothing was written twice.
        assert first.metrics.written + second.metrics.written == 600
        assert store.count_frames() == 600
        assert _fully_committed(settings, group, verdict_topics)
    finally:
        for thread in threads:
            thread.join(timeout=60)
        store.close()
