"""The processor's Prometheus metrics (served by ``lineguard process`` when
``processor.metrics_port`` is set; see lineguard/metrics.py). CONSUMER_LAG is set by
lineguard.kafka.LagTracker.

The alert rules in deploy/prometheus/alerts.yml read these names: rename one there too.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from lineguard.inspection import LoadedModel

# Label for a frame whose camera is unknown (undecodable message) and for cameras past the cap below.
NO_CAMERA = ""
OTHER_CAMERAS = "other"
# Camera ids come from producers, so a misbehaving one could mint a new id per frame: past this many
# distinct cameras on one line, further ones share the label "other" and the series stay bounded.
MAX_CAMERAS_PER_LINE = 256

FRAMES_IN = Counter("lineguard_processor_frames_in", "Frame messages taken from the frame topics, per camera "
                    "(camera \"\" for undecodable messages)", ["line", "camera"])
VERDICTS_OUT = Counter("lineguard_processor_verdicts_out", "Verdicts acknowledged by the broker", ["line"])
# The same verdicts by outcome, counted with verdicts_out: the defect-rate alert divides one by the other.
VERDICTS = Counter("lineguard_processor_verdicts", "Verdicts acknowledged by the broker, by result (pass, defective)",
                   ["line", "result"])
MODEL_INFO = Gauge("lineguard_processor_model_info",
                   "1 for each model loaded, labelled with its folder's product and line (\"\" product-wide), "
                   "manifest name, version and graph precision",
                   ["product", "line", "model_name", "version", "precision"])
SHADOW_VERDICTS = Counter("lineguard_processor_shadow_verdicts", "Shadow candidates' verdicts scored, by result "
                          "(pass, defective); published to lineguard.shadow.<line> only", ["line", "result"])
SHADOW_FAILURES = Counter("lineguard_processor_shadow_failures", "Batches or frames the shadow candidate failed to "
                          "score (the live verdicts are published regardless)", ["line"])
LATE_VERDICTS = Counter("lineguard_processor_late_verdicts",
                        "Verdicts scored after their line's verdict deadline (flagged late, never gated)", ["line"])
PARTS_DECIDED = Counter("lineguard_parts_decided", "Part verdicts published, by reason (complete, deadline)",
                        ["line", "reason"])
LATE_PARTS = Counter("lineguard_parts_late", "Part verdicts decided after their deadline or with a late view",
                     ["line"])
HEATMAPS_OUT = Counter("lineguard_processor_heatmaps_out", "Heatmaps acknowledged by the broker", ["line"])
DEAD_LETTERS = Counter("lineguard_processor_dead_letters",
                       "Frames sent to the dead-letter topic, by line (from the topic name) and reason code",
                       ["line", "reason"])
PUBLISH_RETRIES = Counter("lineguard_processor_publish_retries", "Failed sends to Kafka that were retried")
BATCH_SIZE = Histogram("lineguard_processor_batch_size", "Frames per scored batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
SCORING_SECONDS = Histogram("lineguard_processor_scoring_seconds",
                            "Time to decode, score and render one batch (worker threads)",
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
QUEUE_WAIT_SECONDS = Histogram("lineguard_processor_queue_wait_seconds",
                               "Time a frame waited in the micro-batcher before scoring began",
                               buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PENDING = Gauge("lineguard_processor_pending_frames",
                "Frames taken from Kafka and not yet acknowledged (batcher queues and flushes in progress)")
CONSUMER_LAG = Gauge("lineguard_processor_consumer_lag",
                     "Frames after the group's committed offset, per partition this worker holds",
                     ["topic", "partition"])


_cameras: dict[str, set[str]] = {}
_cameras_lock = threading.Lock()


def camera_label(line: str, camera: str) -> str:
    """``camera`` as the frames-in label of ``line``: itself for the first MAX_CAMERAS_PER_LINE ids, else "other"."""
    if camera == NO_CAMERA:
        return camera
    with _cameras_lock:
        seen = _cameras.setdefault(line, set())
        if camera in seen:
            return camera
        if len(seen) < MAX_CAMERAS_PER_LINE:
            seen.add(camera)
            return camera
    return OTHER_CAMERAS


def count_verdict(line: str, defective: bool) -> None:
    VERDICTS_OUT.labels(line).inc()
    VERDICTS.labels(line, "defective" if defective else "pass").inc()


_model_series: dict[str, tuple[str, ...]] = {}  # model folder -> its MODEL_INFO labels
_model_lock = threading.Lock()


def model_loaded(model: LoadedModel) -> None:
    """ModelRegistry's load hook: one MODEL_INFO series per folder, replaced when the folder is reloaded."""
    labels = (model.product, model.line_id or "", model.engine.name, model.engine.version, model.engine.precision)
    with _model_lock:
        old = _model_series.get(model.folder)
        if old is not None and old != labels:
            try:
                MODEL_INFO.remove(*old)
            except KeyError:  # removed meanwhile (tests clear the registry)
                pass
        _model_series[model.folder] = labels
        MODEL_INFO.labels(*labels).set(1)
