"""``lineguard replay --deadletter``: put dead-lettered frames that can now be scored back on their frame topic.

A dead letter's ``raw`` is the original Frame message, byte for byte, unless it was cut at
``limits.deadletter_max_raw_bytes`` (``raw_size > len(raw)``): a cut frame is counted and left
alone, never injected. The frame goes back unchanged (same ``frame_id``), so the processors
score it as if it had just arrived and ClickHouse keeps one row per frame.

Idempotent: each injected frame leaves a marker on the compacted topic
``lineguard.replay-markers``, keyed by where the frame first arrived (its frame topic, partition
and offset, which the dead letter carries). A second run skips what has a marker, whatever its
filters; a frame that fails again gets a new dead letter from a new offset, so it can be replayed
once more after the next fix. Frames are injected and acknowledged before their markers are
written: a crash in between injects a frame twice at worst, which the store collapses.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from lineguard.config import Settings
from lineguard.kafka import ensure_compacted_topic, producer_client, read_topic
from lineguard.schemas import DeadLetter, Frame, Reason, SchemaError, topics

# Reasons a frame can outlive: a model that arrives later, an engine or camera config that gets fixed.
# The others (malformed, oversize...) are in the bytes and would fail again.
REPLAYABLE_REASONS = (Reason.UNKNOWN_PRODUCT.value, Reason.SCORING_FAILED.value)
REPLAY_HEADER = "lineguard-replayed-from"  # on each injected frame: the dead letter's source, for tracing


@dataclass
class ReplayFilter:
    reasons: tuple[str, ...] = REPLAYABLE_REASONS
    since_ns: int | None = None  # dead-lettered at or after
    line: str | None = None


@dataclass
class ReplayPlan:
    """What a run found on the dead-letter topic: the frames to inject, and why the others are not."""

    to_inject: list[tuple[str, DeadLetter, Frame]] = field(default_factory=list)  # (marker key, letter, frame)
    counts: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        c = self.counts
        return (f"replay: read={c['read']} replayed={c['replayed']} skipped_truncated={c['skipped_truncated']} "
                f"skipped_reason={c['skipped_reason']} skipped_filter={c['skipped_filter']} "
                f"already_replayed={c['already_replayed']} skipped_invalid={c['skipped_invalid']}"
                + (f" would_replay={c['would_replay']}" if "would_replay" in c else "")
                + (f" not_delivered={c['not_delivered']}" if c["not_delivered"] else ""))


def marker_key(letter: DeadLetter) -> str:
    """Where the frame first arrived: the same frame message dead-lettered twice (a re-delivery) has one key."""
    return f"{letter.source_topic}/{letter.partition}/{letter.offset}"


def _is_frame_topic(topic: str) -> bool:
    try:
        return topic == topics.frames(topics.line_of(topic))
    except ValueError:
        return False


def _classify(letter: DeadLetter, wanted: ReplayFilter, replayed: set[str]) -> str | Frame:
    """The frame to inject, or the count it is skipped under."""
    if letter.reason not in wanted.reasons:
        return "skipped_reason"
    if (not _is_frame_topic(letter.source_topic)
            or (wanted.line is not None and letter.source_topic != topics.frames(wanted.line))
            or (wanted.since_ns is not None and letter.failed_at_ns < wanted.since_ns)):
        return "skipped_filter"
    if letter.raw_size != len(letter.raw):
        return "skipped_truncated"  # cut at limits.deadletter_max_raw_bytes: not the frame any more
    if marker_key(letter) in replayed:
        return "already_replayed"
    try:
        frame = Frame.decode(letter.raw)
    except SchemaError:
        return "skipped_invalid"
    if letter.source_topic != topics.frames(frame.line_id):
        return "skipped_invalid"  # it would be dead-lettered as unknown_line again
    return frame


def plan_replay(settings: Settings, wanted: ReplayFilter) -> ReplayPlan:
    """Read the markers and every retained dead letter; decide, without writing anything."""
    replayed = {r.key.decode() for r in read_topic(settings.kafka, topics.REPLAY_MARKERS) if r.key and r.value}
    plan = ReplayPlan()
    for record in read_topic(settings.kafka, topics.DEADLETTER):
        plan.counts["read"] += 1
        try:
            letter = DeadLetter.decode(record.value)
        except SchemaError:
            plan.counts["skipped_invalid"] += 1
            continue
        outcome = _classify(letter, wanted, replayed)
        if isinstance(outcome, str):
            plan.counts[outcome] += 1
            continue
        replayed.add(marker_key(letter))  # the same frame dead-lettered twice is injected once
        plan.to_inject.append((marker_key(letter), letter, outcome))
    return plan


def _produce_all(settings: Settings, messages: list[tuple[str, bytes, bytes, list]]) -> list[bool]:
    """Produce (topic, key, value, headers) and wait; per message, whether the broker acknowledged it."""
    producer = producer_client(settings.kafka, **{"enable.idempotence": True, "acks": "all"})
    delivered = [False] * len(messages)

    def on_delivery(index: int):  # noqa: ANN202 - a confluent-kafka delivery callback
        def report(err: KafkaError | None, _msg: Message) -> None:
            delivered[index] = err is None
        return report

    for i, (topic, key, value, headers) in enumerate(messages):
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery(i))
        producer.poll(0)
    producer.flush(60)
    return delivered


def inject(settings: Settings, plan: ReplayPlan) -> int:
    """Put the planned frames back on their topics, then mark each acknowledged one; return how many."""
    frames = [(letter.source_topic, frame.camera_id.encode(), letter.raw,
               [(REPLAY_HEADER, marker_key(letter).encode())]) for _key, letter, frame in plan.to_inject]
    delivered = _produce_all(settings, frames)
    now_ns = time.time_ns()
    markers = [(topics.REPLAY_MARKERS, key.encode(),
                json.dumps({"frame_id": frame.frame_id, "reason": letter.reason, "replayed_at_ns": now_ns}).encode(),
                []) for (key, letter, frame), ok in zip(plan.to_inject, delivered) if ok]
    marked = _produce_all(settings, markers)
    if not all(marked):
        raise RuntimeError(f"{marked.count(False)} replay markers were not acknowledged: "
                           "a second run may inject those frames again (the store still keeps one row each)")
    return sum(delivered)


def replay_deadletters(settings: Settings, wanted: ReplayFilter, dry_run: bool = False) -> ReplayPlan:
    ensure_compacted_topic(settings.kafka, topics.REPLAY_MARKERS)
    plan = plan_replay(settings, wanted)
    if dry_run:
        plan.counts["replayed"] = 0
        plan.counts["would_replay"] = len(plan.to_inject)
    else:
        plan.counts["replayed"] = inject(settings, plan)
        plan.counts["not_delivered"] = len(plan.to_inject) - plan.counts["replayed"]
    return plan
