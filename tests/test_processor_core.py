"""The processor's pure core: batching, model routing with hot reload, scoring to verdicts (no Kafka)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from lineguard.config import ProcessorConfig
from lineguard.engines.base import calibrate
from lineguard.engines.baseline.model import BaselineModel
from lineguard.processors.batching import BatchLimits, MicroBatcher
from lineguard.processors.models import ModelRegistry
from lineguard.processors.scoring import BatchScorer, Work
from lineguard.schemas import Frame, ImageLimits, new_frame_id
from lineguard.schemas import image as imagecodec


def _normal(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    base = np.full((size, size, 3), 120, np.float32)
    return (base + rng.normal(0, 4, base.shape)).clip(0, 255).astype(np.uint8)


def _save_baseline(folder, rng, version="1") -> None:
    images = [_normal(rng) for _ in range(24)]
    model = BaselineModel((64, 64)).fit(images[:16])
    thresholds, stats = calibrate(model.score(images[16:])[0])
    model.save(folder, name="widget", version=version, thresholds=thresholds, calibration=stats,
               map_display_range=(0.0, 3.0), training={"n_images": 16})


def _frame(img: np.ndarray, product: str = "widget", line: str = "line1", encoding: str = "png") -> Frame:
    data, dtype, shape = imagecodec.encode(img, encoding)
    return Frame(frame_id=new_frame_id(), line_id=line, camera_id="cam1", product=product,
                 captured_at_ns=time.time_ns(), seq=0, encoding=encoding, image=data, dtype=dtype, shape=shape)


def test_batcher_flushes_on_size_and_on_wait():
    flushed: list[tuple[str, list[int]]] = []

    async def prepare(key, items):
        return None

    async def publish(key, items, prepared):
        flushed.append((key, list(items)))

    async def main():
        limits = {"a": BatchLimits(3, 10_000), "b": BatchLimits(100, 30)}
        batcher = MicroBatcher(lambda k: limits[k], prepare, publish, max_pending=100)
        for i in range(7):
            await batcher.put("a", i)
        await batcher.put("b", 99)
        await asyncio.sleep(0.15)  # "b" flushes by time; "a" has 1 item left waiting 10 s
        assert ("b", [99]) in flushed
        assert [items for key, items in flushed if key == "a"] == [[0, 1, 2], [3, 4, 5]]
        await batcher.drain()
        assert ("a", [6]) in flushed
        assert batcher.pending == 0

    asyncio.run(main())


def test_batcher_put_blocks_when_full():
    release = asyncio.Event()

    async def slow_prepare(key, items):
        await release.wait()

    async def publish(key, items, prepared):
        pass

    async def main():
        batcher = MicroBatcher(lambda k: BatchLimits(2, 1), slow_prepare, publish, max_pending=4)
        for i in range(4):
            await batcher.put("k", i)
        blocked = asyncio.ensure_future(batcher.put("k", 5))
        await asyncio.sleep(0.1)
        assert not blocked.done()  # back-pressure: the fifth item waits for capacity
        release.set()
        await asyncio.wait_for(blocked, 2)
        await batcher.drain()

    asyncio.run(main())


def test_batches_publish_in_order_even_when_a_later_one_prepares_faster():
    published: list[int] = []

    async def prepare(key, items):
        await asyncio.sleep(0.2 if items[0] == 0 else 0.01)  # the first batch is the slow one
        return items

    async def publish(key, items, prepared):
        published.extend(prepared)

    async def main():
        batcher = MicroBatcher(lambda k: BatchLimits(2, 10_000), prepare, publish, max_pending=10)
        for i in range(4):
            await batcher.put("cam", i)
        await batcher.drain()

    asyncio.run(main())
    assert published == [0, 1, 2, 3]


def test_scorer_verdicts_threshold_override_and_dead_letters(tmp_path):
    rng = np.random.default_rng(0)
    _save_baseline(tmp_path / "widget", rng)
    config = ProcessorConfig(model_dir=tmp_path, processor_id="p1", heatmaps="defective")
    scorer = BatchScorer(config, ImageLimits(), ModelRegistry(tmp_path))
    defect = _normal(rng)
    defect[20:40, 20:40] = 255
    corrupt = _frame(_normal(rng), encoding="jpeg")
    corrupt.image = corrupt.image[: len(corrupt.image) // 3]
    batch = [Work(_frame(_normal(rng)), time.time_ns()), Work(_frame(defect), time.time_ns()), Work(corrupt, time.time_ns())]
    outcomes = scorer.score(batch)
    by_id = {o.work.frame.frame_id: o for o in outcomes}
    normal_o, defect_o, corrupt_o = (by_id[w.frame.frame_id] for w in batch)
    assert normal_o.verdict is not None and not normal_o.verdict.is_defective and normal_o.heatmap is None
    assert defect_o.verdict.is_defective and defect_o.verdict.score > defect_o.verdict.threshold
    assert defect_o.heatmap is not None and defect_o.heatmap.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert defect_o.verdict.heatmap_key == defect_o.heatmap.key
    assert defect_o.heatmap.key.startswith("line1/") and defect_o.heatmap.key.endswith(f"{defect_o.verdict.frame_id}.png")
    assert corrupt_o.failure is not None and corrupt_o.failure.reason == "undecodable_image"

    # A per-line override above every score turns the defect into a pass on that line only.
    config.threshold_overrides = {"line1": {"widget": 1e9}}
    again = scorer.score([Work(_frame(defect), time.time_ns())])[0]
    assert not again.verdict.is_defective and again.verdict.threshold == 1e9


def test_unknown_product_is_a_dead_letter(tmp_path):
    rng = np.random.default_rng(1)
    _save_baseline(tmp_path / "widget", rng)
    scorer = BatchScorer(ProcessorConfig(model_dir=tmp_path), ImageLimits(), ModelRegistry(tmp_path))
    out = scorer.score([Work(_frame(_normal(rng), product="gadget"), time.time_ns())])
    assert out[0].failure is not None and out[0].failure.reason == "unknown_product"


def test_registry_picks_up_a_retrained_model_and_line_specific_models(tmp_path):
    rng = np.random.default_rng(2)
    _save_baseline(tmp_path / "widget", rng, version="v1")
    registry = ModelRegistry(tmp_path, poll_s=0.01)
    assert registry.get("widget", "line1").version == "v1"
    time.sleep(0.05)
    _save_baseline(tmp_path / "widget", rng, version="v2")
    time.sleep(0.05)
    assert registry.get("widget", "line1").version == "v2"
    assert registry.reloads == 1
    _save_baseline(tmp_path / "widget@line2", rng, version="line2-only")
    assert registry.get("widget", "line2").version == "line2-only"
    assert registry.get("widget", "line1").version == "v2"
    assert registry.get("../etc", "line1") is None


def test_registry_scores_with_the_int8_graph_where_asked_and_exported(tmp_path):
    import shutil

    from lineguard.engines.manifest import INT8_FILE, ONNX_FILE

    rng = np.random.default_rng(3)
    _save_baseline(tmp_path / "widget", rng, version="v1")
    _save_baseline(tmp_path / "gear", rng, version="v1")
    shutil.copy(tmp_path / "widget" / ONNX_FILE, tmp_path / "widget" / INT8_FILE)  # stands in for an export
    int8 = ModelRegistry(tmp_path, precision="int8")
    assert int8.get("widget", "line1").onnx_file == INT8_FILE
    assert int8.get("gear", "line1").onnx_file == ONNX_FILE  # no INT8 graph: FP32, with a warning
    assert ModelRegistry(tmp_path).get("widget", "line1").onnx_file == ONNX_FILE  # fp32 by default
