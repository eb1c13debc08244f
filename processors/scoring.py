"""Turning a batch of frames into verdicts, heatmaps and dead letters: the processor's Frame -> Verdict assembly.

No Kafka here: the faust app (``app.py``) hands a batch of decoded
:class:`Frame` messages in and publishes what comes out. Everything in this
module is synchronous and runs in worker threads, so the event loop stays
free to heartbeat; numpy, OpenCV, PIL and ONNX Runtime release the GIL. Model
lookup, thresholds and overlays are ``lineguard.inspection``'s, shared with the API.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lineguard.config import PlantConfig, ProcessorConfig
from lineguard.engines.regions import RegionError, Regions, mismatch, score_frames
from lineguard.inspection import ModelRegistry, NonFiniteScore, is_defective, render_overlay, threshold_for
from lineguard.schemas import Frame, Heatmap, ImageLimits, Reason, SchemaError, Verdict, image, topics, verdict_meta

from . import metrics as prom
from .archive import archive_message, wants_archive

log = logging.getLogger(__name__)


@dataclass
class Work:
    """One frame waiting to be scored, with what the stream needs to acknowledge it."""

    frame: Frame
    received_ns: int
    handle: Any = None  # the faust event, acknowledged once the outcome is durably produced


@dataclass
class Outcome:
    work: Work
    verdict: Verdict | None = None
    heatmap: Heatmap | None = None
    failure: SchemaError | None = None  # -> dead letter
    archive: Heatmap | None = None  # the frame's image for the archive (processor.archive), stored by the heatmap sink
    shadow: Verdict | None = None  # the shadow candidate's verdict of the same frame -> lineguard.shadow.<line> only


@dataclass
class BatchStats:
    decode_ms: float = 0.0
    inference_ms: float = 0.0
    render_ms: float = 0.0
    sizes: list[int] = field(default_factory=list)


class BatchScorer:
    def __init__(self, config: ProcessorConfig, limits: ImageLimits, registry: ModelRegistry,
                 decode_threads: int = 2, plant: PlantConfig | None = None) -> None:
        self.config = config
        self.plant = plant or PlantConfig()
        self.limits = limits
        self.registry = registry
        self._pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="decode")
        # Each camera's regions (ROI, tiles, ignore mask read once) and the mismatches already logged.
        self._regions: dict[tuple[str, str], Regions | SchemaError] = {}
        self._region_messages: set[tuple] = set()
        self.stats = BatchStats()

    def close(self) -> None:
        self._pool.shutdown(wait=False)

    def _is_late(self, frame: Frame, scored_at_ns: int) -> bool | None:
        """Past the line's verdict deadline after capture; None when the line has none."""
        deadline_ms = self.plant.line(frame.line_id).verdict_deadline_ms
        if deadline_ms is None:
            return None
        return scored_at_ns - frame.captured_at_ns > deadline_ms * 1_000_000

    def _regions_for(self, frame: Frame, engine: Any) -> Regions | SchemaError:
        """The frame's camera regions (``plant.lines``), or why this model must not score them."""
        key = (frame.line_id, frame.camera_id)
        regions = self._regions.get(key)
        if regions is None:
            try:
                regions = Regions.from_camera(self.plant.camera(frame.line_id, frame.camera_id))
            except (RegionError, OSError) as exc:
                regions = SchemaError(Reason.SCORING_FAILED, f"camera {frame.camera_id} on {frame.line_id}: {exc}")
                log.error("%s", regions)
            self._regions[key] = regions
        if isinstance(regions, SchemaError):
            return regions
        manifest = engine.manifest
        refusal, warning = mismatch(getattr(manifest, "regions", None), regions)
        if refusal or warning:
            message = f"model {manifest.name} {manifest.version} on camera {frame.camera_id} of {frame.line_id}: " \
                      f"{refusal or warning}"
            if (key, manifest.version, message) not in self._region_messages:  # once per camera and model version
                self._region_messages.add((key, manifest.version, message))
                (log.error if refusal else log.warning)("%s", message)
            if refusal:
                return SchemaError(Reason.SCORING_FAILED, message)
        return regions

    def _score_frames(self, engine: Any, images: list[np.ndarray],
                      regions: list[Regions | SchemaError]) -> list[tuple[Any, Any, SchemaError | None]]:
        """(score, map, failure) per frame. The model inputs (tiles) of every frame go through the engine as one
        stream of full batches; a frame whose regions are refused, or that breaks the engine, fails alone."""
        size = (engine.manifest.input.height, engine.manifest.input.width)
        max_batch = getattr(engine, "max_batch", None) or max(1, len(images))
        results: list[tuple[Any, Any, SchemaError | None]] = [
            (None, None, r if isinstance(r, SchemaError) else None) for r in regions]
        scorable = [i for i, r in enumerate(regions) if isinstance(r, Regions)]
        try:
            scores, maps = score_frames(engine.score, [images[i] for i in scorable], [regions[i] for i in scorable],
                                        size, max_batch)
            for i, s, m in zip(scorable, scores, maps):
                results[i] = (s, m, None)
        except Exception as exc:  # isolate the frame that breaks the engine, score the rest
            log.warning("batch of %d failed (%s); scoring frames one by one", len(images), exc)
            for i in scorable:
                try:
                    s, m = score_frames(engine.score, [images[i]], regions[i], size, max_batch)
                    results[i] = (s[0], m[0], None)
                except Exception as one_exc:
                    results[i] = (None, None, SchemaError(Reason.SCORING_FAILED,
                                                          f"{type(one_exc).__name__}: {one_exc}"))
        return results

    def _decode(self, frame: Frame) -> np.ndarray | SchemaError:
        try:
            return image.decode(frame.encoding, frame.image, self.limits, frame.dtype, frame.shape)
        except SchemaError as exc:
            return exc

    def score(self, batch: list[Work]) -> list[Outcome]:
        """Score frames that share one model (same product and line)."""
        if not batch:
            return []
        started = time.perf_counter()
        started_ns = time.time_ns()
        first = batch[0].frame
        model = self.registry.get(first.product, first.line_id)
        if model is None:
            err = SchemaError(Reason.UNKNOWN_PRODUCT,
                              f"no model for product {first.product!r} on line {first.line_id!r} "
                              f"in {self.registry.model_dir}")
            return [Outcome(w, failure=err) for w in batch]
        engine = model.engine

        decoded = list(self._pool.map(self._decode, [w.frame for w in batch]))
        outcomes: list[Outcome] = []
        good: list[tuple[Work, np.ndarray]] = []
        for work, result in zip(batch, decoded):
            if isinstance(result, SchemaError):
                outcomes.append(Outcome(work, failure=result))
            else:
                good.append((work, result))
        decoded_at = time.perf_counter()
        self.stats.decode_ms = (decoded_at - started) * 1000
        if not good:
            return outcomes

        images = [img for _, img in good]
        results = self._score_frames(engine, images, [self._regions_for(w.frame, engine) for w, _ in good])
        scored_at = time.perf_counter()
        inference_ms = (scored_at - decoded_at) * 1000
        self.stats.inference_ms = inference_ms
        self.stats.sizes.append(len(images))

        scored_at_ns = time.time_ns()
        manifest = engine.manifest
        threshold = threshold_for(self.config, first.line_id, first.product, manifest.thresholds.value)
        for (work, img), (score, amap, failure) in zip(good, results):
            if failure is not None:
                outcomes.append(Outcome(work, failure=failure))
                continue
            frame = work.frame
            score = float(score)
            try:
                defective = is_defective(score, threshold)
            except NonFiniteScore as exc:
                outcomes.append(Outcome(work, failure=SchemaError(Reason.SCORING_FAILED, str(exc))))
                continue
            want_heatmap = self.config.heatmaps == "all" or (self.config.heatmaps == "defective" and defective)
            heatmap = None
            if want_heatmap:
                try:
                    png = render_overlay(img, amap[0], manifest.map_display_range, threshold)
                except Exception as exc:  # one frame's overlay must not take its batch down with it
                    log.warning("heatmap of frame %s failed: %s", frame.frame_id, exc)
                    outcomes.append(Outcome(work, failure=SchemaError(
                        Reason.SCORING_FAILED, f"heatmap: {type(exc).__name__}: {exc}")))
                    continue
                key = topics.heatmap_key(frame.line_id, frame.frame_id, frame.captured_at_ns)
                heatmap = Heatmap(frame_id=frame.frame_id, line_id=frame.line_id, key=key, content_type="image/png",
                                  data=png, captured_at_ns=frame.captured_at_ns)
            verdict = Verdict(
                frame_id=frame.frame_id, line_id=frame.line_id, camera_id=frame.camera_id,
                product=frame.product, seq=frame.seq, captured_at_ns=frame.captured_at_ns,
                scored_at_ns=scored_at_ns, model_name=manifest.name, model_version=manifest.version,
                score=score, threshold=threshold, is_defective=bool(defective),
                heatmap_key=heatmap.key if heatmap else None,
                queue_wait_ms=max(0.0, (started_ns - work.received_ns) / 1e6),
                inference_ms=inference_ms, processor_id=self.config.processor_id,
                part_id=frame.part_id, meta=verdict_meta(frame.meta) or None,
                late=self._is_late(frame, scored_at_ns),
            )
            archived = archive_message(frame, img) if wants_archive(self.config, frame.frame_id, defective) else None
            outcomes.append(Outcome(work, verdict=verdict, heatmap=heatmap, archive=archived))
        self.stats.render_ms = (time.perf_counter() - scored_at) * 1000
        self._shadow(first, [o for o in outcomes if o.verdict is not None], dict((id(w), img) for w, img in good))
        return outcomes

    def _shadow(self, first: Frame, live: list[Outcome], images: dict[int, np.ndarray]) -> None:
        """Score the live verdicts' frames with the line's shadow candidate, if it has one, into ``Outcome.shadow``.

        After the live scoring, in the same thread: a candidate that fails (to load, to score, a frame or the
        whole batch) is logged and counted in ``lineguard_processor_shadow_failures_total`` and leaves the live
        verdicts as they are; it costs the live verdicts no more than its own scoring time."""
        if not live or self.registry.shadow is None:
            return
        try:
            model = self.registry.shadow_for(first.product, first.line_id)
            if model is None:
                return
            engine = model.engine
            started = time.perf_counter()
            works = [o.work for o in live]
            results = self._score_frames(engine, [images[id(w)] for w in works],
                                         [self._regions_for(w.frame, engine) for w in works])
            inference_ms = (time.perf_counter() - started) * 1000
            scored_at_ns = time.time_ns()
            manifest = engine.manifest
            threshold = threshold_for(self.config, first.line_id, first.product, manifest.thresholds.value)
            failed = 0
            for outcome, (score, _amap, failure) in zip(live, results):
                try:
                    if failure is not None:
                        raise failure
                    score = float(score)
                    defective = bool(is_defective(score, threshold))
                except (SchemaError, NonFiniteScore, TypeError, ValueError):
                    failed += 1
                    continue
                outcome.shadow = dataclasses.replace(
                    outcome.verdict, scored_at_ns=scored_at_ns, model_name=manifest.name,
                    model_version=manifest.version, score=score, threshold=threshold, is_defective=defective,
                    heatmap_key=None, inference_ms=inference_ms, late=None)
                prom.SHADOW_VERDICTS.labels(first.line_id, "defective" if defective else "pass").inc()
            if failed:
                prom.SHADOW_FAILURES.labels(first.line_id).inc(failed)
                log.warning("shadow model %s %s failed %d of %d frames on %s", manifest.name, manifest.version,
                            failed, len(live), first.line_id)
        except Exception as exc:  # noqa: BLE001 - the shadow never takes the live verdicts down
            for outcome in live:
                outcome.shadow = None
            prom.SHADOW_FAILURES.labels(first.line_id).inc()
            log.warning("shadow scoring of a batch on %s failed: %s: %s", first.line_id, type(exc).__name__, exc)
