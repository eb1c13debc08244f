"""``lineguard rescore``: score a line's frames of a capture-time range again, with the current or a named model.

Where the scoring runs: here, in the command, with the processors' own :class:`BatchScorer` (the
same decode, regions, thresholds and overlays), not by re-injecting frames for the live processors.
That lets an operator pin a model version (``--model``) without touching what the line runs, keeps
a backlog of re-scoring out of the live frames' batches and verdict deadlines, and a frame that fails
again is counted here rather than dead-lettered a second time. The cost: the command needs the model
and the CPU (or GPU) where it runs, and it reads the processors' settings (thresholds, regions) from its
own configuration, so it must be run with the plant's configuration file.

Frames come from ``lineguard.frames.<line>``: each partition is read from the first message
timestamped at ``--since`` (a frame is sent after its capture, so none captured later is before it) up
to the first timestamped ``--until`` plus :data:`SEND_GRACE_S`; frames are then kept by their own
``captured_at_ns``. Only what the topic still retains can be re-scored (``kafka.frames_retention_ms``).

Each new verdict gets a new ``scored_at_ns`` (so ClickHouse's ``verdicts_latest`` shows it), carries
``meta.rescored = true`` and is usually ``late`` (past the line's deadline): MES consumers and reject
gates can tell it from the live one. Heatmaps are rendered again under the same keys.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from lineguard.config import Settings
from lineguard.inspection import ModelRegistry
from lineguard.kafka import iter_range, offsets_at, producer_client
from lineguard.schemas import Frame, ImageLimits, SchemaError, topics, verdict_meta

from .scoring import BatchScorer, Outcome, Work

log = logging.getLogger("lineguard.rescore")
SEND_GRACE_S = 300  # a frame may reach Kafka this long after its capture (a camera's buffered backlog)


class ModelNotFound(RuntimeError):
    pass


class PinnedModels:
    """A registry serving version ``version`` of each product: the model folder when it holds that version,
    else (``processor.model_source: object_store``) the version pulled from the model store."""

    def __init__(self, settings: Settings, version: str) -> None:
        self.settings = settings
        self.version = version
        self.current = ModelRegistry.from_settings(settings)
        self.shadow = None  # a re-score is one model's verdicts: no shadow candidate runs beside it
        self._pinned_dir = Path(tempfile.mkdtemp(prefix="lineguard-rescore-"))
        self.pinned = ModelRegistry(self._pinned_dir, threads=settings.processor.inference_threads,
                                    precision=settings.processor.precision,
                                    providers=settings.processor.providers or None)

    def get(self, product: str, line_id: str | None = None):  # noqa: ANN201 - a LoadedModel, as the registry's
        model = self.current.get(product, line_id)
        if model is not None and model.engine.manifest.version == self.version:
            return model
        if not (self._pinned_dir / product).exists():
            (self._pinned_dir / product).symlink_to(self._pull(product))
        return self.pinned.get(product)

    def _pull(self, product: str) -> Path:
        if self.settings.processor.model_source != "object_store":
            raise ModelNotFound(f"{self.settings.processor.model_dir} has no version {self.version} of {product} "
                                "(a version not in the model folder is pulled when processor.model_source "
                                "is object_store)")
        from lineguard.inspection.registry import ModelCache, ModelStore, PullRefused
        from lineguard.stores import open_object_store

        cache = ModelCache(ModelStore(open_object_store(self.settings)), self.settings.processor.model_cache_dir)
        try:
            return cache.pull(product, self.version)
        except PullRefused as exc:
            raise ModelNotFound(f"version {self.version} of {product}: {exc}") from None

    @property
    def model_dir(self) -> Path:
        return self.settings.processor.model_dir


def frames_in_range(settings: Settings, line: str, since_ns: int, until_ns: int):  # noqa: ANN201 - Iterator[Frame]
    """The line's retained frames captured in [since_ns, until_ns), in partition order."""
    topic = topics.frames(line)
    starts = offsets_at(settings.kafka, topic, since_ns // 1_000_000)
    ends = offsets_at(settings.kafka, topic, until_ns // 1_000_000 + SEND_GRACE_S * 1000)
    for record in iter_range(settings.kafka, topic, starts, ends):
        try:
            frame = Frame.decode(record.value, max_bytes=settings.kafka.message_max_bytes)
        except SchemaError:
            continue  # dead-lettered when it arrived; nothing to re-score
        if frame.line_id == line and since_ns <= frame.captured_at_ns < until_ns:
            yield frame


class Rescorer:
    """Scores batches of frames per product and publishes the verdicts (and heatmaps), marked re-scored."""

    def __init__(self, settings: Settings, model_version: str | None = None) -> None:
        self.settings = settings
        # The archive is not written again: the frames it would hold are already there, or were not wanted.
        config = settings.processor.model_copy(update={"archive": "none"})
        registry = PinnedModels(settings, model_version) if model_version else ModelRegistry.from_settings(settings)
        self.scorer = BatchScorer(config, ImageLimits.from_config(settings.limits), registry,  # type: ignore[arg-type]
                                  plant=settings.plant)
        # murmur2, as the processors' producer (aiokafka) partitions by key: a camera's re-scored verdicts
        # land on the partition of its live ones.
        self.producer = producer_client(settings.kafka, partitioner="murmur2_random",
                                        **{"enable.idempotence": True, "acks": "all"})
        self.counts: Counter[str] = Counter()
        self.models: set[str] = set()

    def score(self, frames: list[Frame]) -> None:
        by_product: dict[str, list[Work]] = defaultdict(list)
        now_ns = time.time_ns()
        for frame in frames:
            by_product[frame.product].append(Work(frame, now_ns))
        for batch in by_product.values():
            for outcome in self.scorer.score(batch):
                self._publish(outcome)

    def _publish(self, outcome: Outcome) -> None:
        if outcome.verdict is None:
            self.counts["failed"] += 1
            log.warning("frame %s not re-scored: %s", outcome.work.frame.frame_id, outcome.failure)
            return
        verdict = outcome.verdict
        verdict.meta = verdict_meta({"rescored": True, **(verdict.meta or {})})  # first: kept within the bound
        key = verdict.camera_id.encode()
        if outcome.heatmap is not None:
            self.producer.produce(topics.heatmaps(verdict.line_id), key=key, value=outcome.heatmap.encode())
        self.producer.produce(topics.verdicts(verdict.line_id), key=key, value=verdict.encode())
        self.producer.poll(0)
        self.counts["scored"] += 1
        self.counts["defective"] += bool(verdict.is_defective)
        self.models.add(f"{verdict.model_name}:{verdict.model_version}")

    def close(self) -> None:
        undelivered = self.producer.flush(60)
        self.scorer.close()
        if undelivered:
            raise RuntimeError(f"{undelivered} re-scored verdicts or heatmaps were not acknowledged by the broker")


def rescore(settings: Settings, line: str, since_ns: int, until_ns: int, model_version: str | None = None) -> str:
    """Re-score the range and return the summary line."""
    rescorer = Rescorer(settings, model_version)
    batch: list[Frame] = []
    max_batch = settings.processor.batching.max_batch
    seen: set[str] = set()  # a frame on the topic twice (a producer retry, a replay) is scored once
    try:
        for frame in frames_in_range(settings, line, since_ns, until_ns):
            if frame.frame_id in seen:
                rescorer.counts["duplicates"] += 1
                continue
            seen.add(frame.frame_id)
            rescorer.counts["frames"] += 1
            batch.append(frame)
            if len(batch) >= max_batch:
                rescorer.score(batch)
                batch = []
        rescorer.score(batch)
    finally:
        rescorer.close()
    c = rescorer.counts
    return (f"rescore: line={line} frames={c['frames']} scored={c['scored']} defective={c['defective']} "
            f"failed={c['failed']} duplicates={c['duplicates']} models={','.join(sorted(rescorer.models)) or '-'}")
