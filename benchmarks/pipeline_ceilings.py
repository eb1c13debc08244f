"""The two ceilings ``bench pipeline`` measures the streaming path against, and the frames every phase sends.

**raw Kafka**: the frames produced and consumed with no scoring; **the engine alone**: JPEG decode +
ONNX Runtime scoring in batches, as the processor does it, in this process, without Kafka.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from lineguard.config import Settings
from lineguard.engines.runtime import ScoringEngine
from lineguard.kafka import consumer_client, ensure_topics, producer_client
from lineguard.schemas import Frame, ImageLimits, new_frame_id, topics
from lineguard.schemas import image as imagecodec


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def render_frames(size: int, n: int, data: Path | None = None, defect_share: float = 0.1,
                  seed: int = 7) -> list[bytes]:
    """n JPEGs at ``size`` px (the same bytes for every phase), ``defect_share`` of them defective.

    From ``data`` (an MVTec root): its defective test images mixed with its normal ones (test/good, then
    train/good); without it, the synthetic camera's frames. The share matters because every defective
    verdict also costs a heatmap (an overlay encoded as PNG), which the engine-alone reference does not
    render; a line runs at a few percent defects, an MVTec test set at most.
    """
    if data is None:
        from lineguard.producers.synthetic import SyntheticCamera

        camera = SyntheticCamera(size=size, seed=seed, defect_rate=defect_share)
        return [imagecodec.encode(camera.render(i).image, "jpeg")[0] for i in range(n)]
    from lineguard.engines.data import list_images, load_rgb

    root = Path(data)
    defective = [p for p in list_images(root / "test") if p.parent.name != "good"] if (root / "test").is_dir() else []
    normal = [p for folder in (root / "test" / "good", root / "train" / "good") if folder.is_dir()
              for p in list_images(folder)]
    if not normal and not defective:
        raise ValueError(f"no images under {data} (expected the MVTec layout: train/good, test/<defect>)")
    rng = np.random.default_rng(seed)
    paths = []
    for _ in range(n):
        pool = defective if (rng.random() < defect_share and defective) or not normal else normal
        paths.append(pool[int(rng.integers(len(pool)))])
    return [imagecodec.encode(load_rgb(path, (size, size)), "jpeg")[0] for path in paths]


def frame_bytes(jpeg: bytes, line: str, product: str, seq: int, camera: str) -> bytes:
    return Frame(frame_id=new_frame_id(), line_id=line, camera_id=camera, product=product,
                 captured_at_ns=time.time_ns(), seq=seq, encoding="jpeg", image=jpeg).encode()


def consume(settings: Settings, topic_names: list[str], expect: int, timeout_s: float,
            on_message) -> int:  # noqa: ANN001
    consumer = consumer_client(settings.kafka, f"bench-{uuid.uuid4().hex[:8]}", **{"enable.auto.commit": False})
    consumer.subscribe(topic_names)
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < expect and time.monotonic() < deadline:
            # poll, not consume(n, timeout): consume waits for n messages or the whole timeout, which
            # added up to 500 ms (250 on average) to every latency this benchmark measured.
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            on_message(msg)
            seen += 1
    finally:
        consumer.close()
    return seen


def measure_kafka(settings: Settings, jpegs: list[bytes], lines: list[str], product: str) -> dict[str, Any]:
    """Produce every frame and consume it back, no scoring: the transport's ceiling."""
    n = len(jpegs) * len(lines)
    ensure_topics(settings.kafka, lines)
    done = threading.Event()
    counts = {"seen": 0}

    def reader() -> None:
        counts["seen"] = consume(settings, [topics.frames(l) for l in lines], n, 300, lambda m: None)
        done.set()

    producer = producer_client(settings.kafka, **{"linger.ms": 5, "compression.type": settings.producer.compression})
    thread = threading.Thread(target=reader, daemon=True)
    start = time.perf_counter()
    thread.start()
    for i, jpeg in enumerate(jpegs):
        for line in lines:
            while True:
                try:
                    producer.produce(topics.frames(line), key=b"cam0", value=frame_bytes(jpeg, line, product, i, "cam0"))
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    thread.join(330)
    elapsed = time.perf_counter() - start
    return {"kafka_fps": counts["seen"] / elapsed, "kafka_frames": counts["seen"], "kafka_s": elapsed}


def measure_engine(model_folder: Path, jpegs: list[bytes], batch: int, threads: int = 0) -> dict[str, Any]:
    """JPEG decode + scoring in batches, as the processor does it, without Kafka."""
    from concurrent.futures import ThreadPoolExecutor

    engine = ScoringEngine(model_folder, threads=threads)
    limits = ImageLimits()
    pool = ThreadPoolExecutor(2)

    def decode(data: bytes) -> np.ndarray:
        return imagecodec.decode("jpeg", data, limits)

    def run_batch(chunk: list[bytes]) -> None:
        engine.score(list(pool.map(decode, chunk)))

    run_batch(jpegs[:batch])  # warm-up
    batch_ms: list[float] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(0, len(jpegs) - batch + 1, batch):
        t0 = time.perf_counter()
        run_batch(jpegs[i:i + batch])
        batch_ms.append((time.perf_counter() - t0) * 1000)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    pool.shutdown()
    frames = len(batch_ms) * batch
    return {"engine_fps": frames / elapsed, "engine_cpu_ms_per_frame": 1000 * cpu / frames,
            "batch_scoring_ms": float(np.median(batch_ms)),
            "batch_scoring_p99_ms": percentile(batch_ms, 99), "engine_providers": engine.providers}
