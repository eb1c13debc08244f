"""The processor's pure core: batching, model routing with hot reload, scoring to verdicts (no Kafka)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from lineguard.config import ProcessorConfig
from lineguard.engines.base import calibrate
from lineguard.engines.baseline.model import BaselineModel
from lineguard.inspection import HEATMAP_MAX_SIDE, ModelLoadError, ModelRegistry, for_display
from lineguard.processors.batching import BatchLimits, MicroBatcher
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
    assert registry.get("widget", "line1").engine.version == "v1"
    time.sleep(0.05)
    _save_baseline(tmp_path / "widget", rng, version="v2")
    time.sleep(0.05)
    assert registry.get("widget", "line1").engine.version == "v2"
    assert registry.reloads == 1
    _save_baseline(tmp_path / "widget@line2", rng, version="line2-only")
    line2 = registry.get("widget", "line2")
    assert (line2.engine.version, line2.folder, line2.product, line2.line_id) == ("line2-only", "widget@line2",
                                                                                   "widget", "line2")
    assert registry.get("widget", "line1").engine.version == "v2"
    assert registry.get("widget").engine.version == "v2"  # no line: the product-wide model


def test_registry_scores_with_the_int8_graph_where_asked_and_exported(tmp_path):
    import shutil

    from lineguard.engines.manifest import INT8_FILE, ONNX_FILE

    rng = np.random.default_rng(3)
    _save_baseline(tmp_path / "widget", rng, version="v1")
    _save_baseline(tmp_path / "gear", rng, version="v1")
    shutil.copy(tmp_path / "widget" / ONNX_FILE, tmp_path / "widget" / INT8_FILE)  # stands in for an export
    int8 = ModelRegistry(tmp_path, precision="int8")
    assert int8.get("widget", "line1").engine.onnx_file == INT8_FILE
    assert int8.get("gear", "line1").engine.onnx_file == ONNX_FILE  # no INT8 graph: FP32, with a warning
    assert ModelRegistry(tmp_path).get("widget", "line1").engine.onnx_file == ONNX_FILE  # fp32 by default
    config = ProcessorConfig(model_dir=tmp_path, precision="int8", model_poll_s=7.0, inference_threads=1)
    shared = ModelRegistry.from_config(config)  # what the processors and the API build
    assert (shared.precision, shared.poll_s, shared.threads) == ("int8", 7.0, 1)
    assert shared.get("widget", "line1").engine.onnx_file == INT8_FILE


def test_registry_name_check_keeps_every_lookup_inside_the_model_dir(tmp_path):
    rng = np.random.default_rng(4)
    models = tmp_path / "models"
    _save_baseline(models / "widget", rng, version="inside")
    _save_baseline(tmp_path / "outside", rng, version="outside")  # beside the model dir, not in it
    _save_baseline(models / ".hidden", rng, version="hidden")
    registry = ModelRegistry(models)
    for product, line in [("../outside", "line1"), ("..", "line1"), (".", "line1"), (".hidden", "line1"),
                          ("widget/../../outside", "line1"), ("widget\n", "line1"), ("", "line1"),
                          ("widget", "../../outside"), ("widget", "x/y"), ("w" * 129, "line1")]:
        assert registry.get(product, line) is None, (product, line)
        assert registry.folder_for(product, line) is None
    assert registry.get("widget", "line1").engine.version == "inside"
    assert [m.folder for m in registry.load_all()] == ["widget"]  # ".hidden" is never served


def test_a_retrained_model_that_fails_to_load_leaves_the_old_one_serving(tmp_path):
    from lineguard.engines.manifest import ONNX_FILE

    rng = np.random.default_rng(5)
    _save_baseline(tmp_path / "widget", rng, version="v1")
    _save_baseline(tmp_path / "gear", rng, version="v1")
    registry = ModelRegistry(tmp_path, poll_s=0.01)
    assert registry.get("widget", "line1").engine.version == "v1"
    time.sleep(0.05)
    _save_baseline(tmp_path / "widget", rng, version="v2")
    (tmp_path / "widget" / ONNX_FILE).write_bytes(b"not an onnx graph")  # a broken copy
    (tmp_path / "gear" / ONNX_FILE).write_bytes(b"not an onnx graph")  # broken before its first load
    time.sleep(0.05)
    assert registry.get("widget", "line1").engine.version == "v1"
    assert "widget" in registry.errors and registry.reloads == 0
    with pytest.raises(ModelLoadError, match="gear"):
        registry.get("gear", "line1")
    assert [m.folder for m in registry.load_all()] == ["widget"]  # the broken one is left out, not fatal
    # Through the scorer: the batch on the broken model is dead-lettered, the other scored by v1.
    scorer = BatchScorer(ProcessorConfig(model_dir=tmp_path), ImageLimits(), registry)
    with pytest.raises(ModelLoadError):  # the faust app turns this into scoring_failed dead letters
        scorer.score([Work(_frame(_normal(rng), product="gear"), time.time_ns())])
    assert scorer.score([Work(_frame(_normal(rng)), time.time_ns())])[0].verdict.model_version == "v1"
    time.sleep(0.05)
    _save_baseline(tmp_path / "widget", rng, version="v3")  # fixed: picked up at the next poll
    time.sleep(0.05)
    assert registry.get("widget", "line1").engine.version == "v3" and "widget" not in registry.errors


@pytest.mark.parametrize("shape", [(1, 2048), (2048, 1)], ids=["2048x1", "1x2048"])
def test_thin_frames_get_their_heatmap_and_no_batch_is_dead_lettered(tmp_path, shape):
    """A line-scan frame shrunk for display keeps at least one pixel a side (it once asked for 0)."""
    from PIL import Image
    import io

    rng = np.random.default_rng(6)
    _save_baseline(tmp_path / "widget", rng)
    config = ProcessorConfig(model_dir=tmp_path, heatmaps="all")
    scorer = BatchScorer(config, ImageLimits(), ModelRegistry(tmp_path))
    thin = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    batch = [Work(_frame(_normal(rng)), time.time_ns()), Work(_frame(thin, encoding="png"), time.time_ns()),
             Work(_frame(thin, encoding="raw"), time.time_ns())]
    outcomes = scorer.score(batch)
    assert [o.failure for o in outcomes] == [None, None, None]
    assert all(o.verdict is not None and o.heatmap is not None for o in outcomes)
    expected = (max(1, shape[1] * HEATMAP_MAX_SIDE // 2048), max(1, shape[0] * HEATMAP_MAX_SIDE // 2048))  # (w, h)
    for outcome in outcomes[1:]:
        overlay = Image.open(io.BytesIO(outcome.heatmap.data))
        assert overlay.format == "PNG" and overlay.size == expected
        assert outcome.verdict.heatmap_key == outcome.heatmap.key
    assert for_display(thin).shape[:2] == expected[::-1]


def test_a_heatmap_that_cannot_be_rendered_dead_letters_only_its_frame(tmp_path, monkeypatch):
    import lineguard.processors.scoring as scoring

    rng = np.random.default_rng(7)
    _save_baseline(tmp_path / "widget", rng)
    real_render = scoring.render_overlay

    def render_or_fail(image, *args, **kwargs):
        if image.shape[0] == 32:
            raise RuntimeError("no overlay for this one")
        return real_render(image, *args, **kwargs)

    monkeypatch.setattr(scoring, "render_overlay", render_or_fail)
    scorer = BatchScorer(ProcessorConfig(model_dir=tmp_path, heatmaps="all"), ImageLimits(), ModelRegistry(tmp_path))
    batch = [Work(_frame(_normal(rng)), time.time_ns()), Work(_frame(_normal(rng, size=32)), time.time_ns()),
             Work(_frame(_normal(rng)), time.time_ns())]
    good, bad, also_good = scorer.score(batch)
    assert good.heatmap is not None and also_good.heatmap is not None and bad.verdict is None
    assert bad.failure.reason == "scoring_failed" and "no overlay" in str(bad.failure)
