"""Regions and tiles: tile geometry, stitching, ROI offsets, ignore masks, the manifest check."""

from __future__ import annotations

import numpy as np
import pytest

from lineguard.config import CameraConfig, TilingConfig
from lineguard.engines.regions import (RegionError, Regions, cut, frame_score, mismatch, plan_frame, score_frames,
                                       stitch, tile_starts)


def _covered(plan) -> np.ndarray:
    """How many tiles cover each frame pixel."""
    count = np.zeros(plan.frame_size, int)
    for x, y, w, h in plan.tiles:
        count[y:y + h, x:x + w] += 1
    return count


@pytest.mark.parametrize("length,tile,overlap", [(2448, 512, 64), (2048, 512, 64), (512, 512, 64), (513, 512, 0),
                                                 (1000, 300, 299), (100, 512, 64)])
def test_tile_starts_cover_the_side_with_full_tiles_and_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length  # the last tile is shifted inward, not cut
    assert all(0 <= s <= length - side for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    # Neighbours share at least `overlap` pixels, and no more than needed except the inward-shifted last one.
    gaps = np.diff(starts)
    assert (gaps <= tile - overlap).all()
    assert (gaps[:-1] == tile - overlap).all()


def test_tiles_cover_the_roi_exactly_and_only_it():
    regions = Regions(roi=(200, 30, 2048, 1900), tile_size=512, tile_overlap=64)
    plan = plan_frame(regions, (2048, 2448), (256, 256))
    count = _covered(plan)
    assert count[30:1930, 200:2248].min() >= 1  # every ROI pixel is in a tile
    outside = count.copy()
    outside[30:1930, 200:2248] = 0
    assert outside.max() == 0  # no tile reaches outside the ROI
    assert all((w, h) == (512, 512) for _, _, w, h in plan.tiles)  # edge tiles are full-size
    assert len(plan.tiles) == 5 * 5  # ceil((2048-512)/448)+1 columns, ceil((1900-512)/448)+1 rows
    assert plan.map_scale == 0.5  # 256 model pixels per 512 frame pixels


def test_cut_gives_model_sized_inputs_from_the_roi():
    frame = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    regions = Regions(roi=(10, 5, 30, 20), tile_size=16, tile_overlap=4)
    plan = plan_frame(regions, frame.shape[:2], (16, 16))
    tiles = cut(frame, plan, (16, 16))
    assert len(tiles) == len(plan.tiles) == 2 * 3
    for (x, y, w, h), tile in zip(plan.tiles, tiles):
        assert np.array_equal(tile, frame[y:y + h, x:x + w])  # same size as the model: cut, not resized
    assert plan.tiles[0][:2] == (10, 5) and plan.tiles[-1][0] + 16 == 40 and plan.tiles[-1][1] + 16 == 25


def test_stitching_a_constant_map_is_exact_in_the_overlaps_and_zero_outside_the_roi():
    regions = Regions(roi=(7, 3, 50, 41), tile_size=16, tile_overlap=5)
    plan = plan_frame(regions, (60, 70), (16, 16))
    assert plan.map_scale == 1.0
    stitched = stitch(plan, [np.full((1, 16, 16), 2.5, np.float32) for _ in plan.tiles])
    assert stitched.shape == (60, 70)
    assert (stitched[3:44, 7:57] == 2.5).all()  # averaged overlaps of equal values: exactly the value
    stitched[3:44, 7:57] = 0
    assert (stitched == 0).all()  # outside the ROI: not inspected


def test_stitching_averages_overlaps_and_puts_each_tile_at_its_place():
    regions = Regions(tile_size=10, tile_overlap=4)
    plan = plan_frame(regions, (10, 16), (10, 10))
    assert plan.tiles == [(0, 0, 10, 10), (6, 0, 10, 10)]
    stitched = stitch(plan, [np.full((10, 10), 1.0), np.full((10, 10), 3.0)])
    assert (stitched[:, :6] == 1.0).all() and (stitched[:, 6:10] == 2.0).all() and (stitched[:, 10:] == 3.0).all()


def test_a_downscaled_map_keeps_the_roi_offset():
    regions = Regions(roi=(100, 40, 200, 100), tile_size=100, tile_overlap=0)
    plan = plan_frame(regions, (200, 400), (50, 50))
    assert plan.map_scale == 0.5 and plan.map_size == (100, 200)
    stitched = stitch(plan, [np.ones((50, 50), np.float32)] * len(plan.tiles))
    assert (stitched[20:70, 50:150] == 1.0).all()
    assert stitched.sum() == 50 * 100


@pytest.mark.parametrize("frame_sized", [False, True])
def test_the_ignore_mask_zeroes_the_map_and_is_left_out_of_the_score(frame_sized):
    roi = (4, 2, 20, 12)
    mask = np.zeros((12, 20), bool)
    mask[:, 10:] = True  # the right half of the ROI is not inspected
    if frame_sized:
        full = np.zeros((16, 30), bool)
        full[2:14, 4:24] = mask
        mask = full
    plan = plan_frame(Regions(roi=roi, tile_size=8, tile_overlap=2, ignored=mask), (16, 30), (8, 8))
    tile_maps = []
    for x, y, w, h in plan.tiles:  # each tile's map: its frame x coordinate, so the right side scores highest
        tile_maps.append(np.broadcast_to(np.arange(x, x + w, dtype=np.float32), (h, w)))
    stitched = stitch(plan, tile_maps)
    assert (stitched[2:14, 14:24] == 0).all() and (stitched[2:14, 4:14] > 0).all()
    assert frame_score(plan, stitched) == 13.0  # the highest inspected column, not the ignored ones beyond


def test_plans_refuse_frames_that_do_not_fit():
    with pytest.raises(RegionError, match="outside"):
        plan_frame(Regions(roi=(100, 0, 50, 50)), (64, 128), (32, 32))
    with pytest.raises(RegionError, match="ignore mask"):
        plan_frame(Regions(roi=(0, 0, 50, 50), ignored=np.zeros((10, 10), bool)), (64, 128), (32, 32))


def test_score_frames_batches_tiles_of_all_frames_and_stitches_per_frame():
    calls: list[int] = []

    def engine(images):  # score = a tile's mean brightness, map = the tile's brightness
        calls.append(len(images))
        maps = np.stack([img[..., 0].astype(np.float32)[None] for img in images])
        return maps.reshape(len(images), -1).max(axis=1), maps

    frames = [np.zeros((40, 64, 3), np.uint8) for _ in range(3)]
    frames[1][30, 50] = 200  # a defect in the second frame only
    regions = Regions(tile_size=16, tile_overlap=0)
    scores, maps = score_frames(engine, frames, regions, (16, 16), max_batch=8)
    n_tiles = len(plan_frame(regions, (40, 64), (16, 16)).tiles)
    assert sum(calls) == 3 * n_tiles and max(calls) == 8  # one flat stream of tiles, in full batches
    assert list(scores) == [0.0, 200.0, 0.0]
    assert [m.shape for m in maps] == [(1, 40, 64)] * 3
    assert maps[1][0, 30, 50] == 200.0
    # Whole-frame regions keep the engine's own score and map.
    plain_scores, plain_maps = score_frames(engine, frames, Regions(), (16, 16))
    assert plain_scores[1] == 200.0 and plain_maps[1].shape == (1, 40, 64)


def test_camera_config_and_manifest_round_trip_and_mismatches(tmp_path):
    import cv2

    mask = np.zeros((20, 30), np.uint8)
    mask[:5] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    camera = CameraConfig(roi=(1, 2, 30, 20), ignore_mask=tmp_path / "m.png", tiling=TilingConfig(size=64, overlap=8))
    regions = Regions.from_camera(camera)
    assert regions.roi == (1, 2, 30, 20) and regions.tile_size == 64 and regions.ignored[:5].all()
    doc = regions.to_manifest()
    assert doc["tiling"] == {"size": 64, "overlap": 8} and len(doc["ignore_mask_sha256"]) == 64
    assert mismatch(doc, regions) == (None, None)
    refusal, _ = mismatch(doc, Regions(roi=(1, 2, 30, 20)))
    assert refusal and "tiles 64 overlap 8" in refusal
    refusal, _ = mismatch(None, regions)  # trained on whole frames, the camera tiles: refused
    assert refusal and "whole frame" in refusal
    refusal, warning = mismatch(doc, Regions(roi=(1, 2, 30, 20), tile_size=64, tile_overlap=8))
    assert refusal is None and "ignore mask" in warning
    assert Regions.from_camera(None).is_whole_frame and mismatch(None, Regions()) == (None, None)


# -- the processor and training on tiles (baseline engine: no torch) ----------------------------------------------

FRAME = (64, 96)  # height, width
ROI = (8, 4, 80, 56)


def _plant_frame(rng: np.random.Generator, defect_at: tuple[int, int] | None = None) -> np.ndarray:
    frame = (np.full((*FRAME, 3), 120.0) + rng.normal(0, 4, (*FRAME, 3))).clip(0, 255).astype(np.uint8)
    if defect_at is not None:
        y, x = defect_at
        frame[y:y + 5, x:x + 5] = 255
    return frame


def _train_tiled_baseline(tmp_path, rng, **regions_args):
    from PIL import Image

    from lineguard.engines.training import train

    data = tmp_path / "normal"
    data.mkdir()
    for i in range(60):  # 12 held out: enough for a threshold above a normal frame's noise
        Image.fromarray(_plant_frame(rng)).save(data / f"{i:03d}.png")
    regions = Regions(roi=ROI, tile_size=32, tile_overlap=8, **regions_args)
    return train("baseline", data, tmp_path / "models" / "widget", name="widget", version="tiled",
                 regions=regions, input_size=(32, 32))


def test_training_on_tiles_records_the_regions_and_calibrates_per_frame(tmp_path):
    import json

    rng = np.random.default_rng(0)
    manifest = json.loads(_train_tiled_baseline(tmp_path, rng).read_text())
    assert manifest["regions"] == {"roi": list(ROI), "tiling": {"size": 32, "overlap": 8}, "ignore_mask_sha256": None}
    assert manifest["training"]["n_images"] == 48 and manifest["training"]["n_inputs"] == 48 * 6  # 3 x 2 tiles each
    assert manifest["calibration"]["n_normal"] == 12  # one score per held-out frame, not per tile


def test_the_processor_scores_a_tiled_camera_frame_as_one_verdict_with_one_heatmap(tmp_path):
    import io
    import time

    from PIL import Image

    from lineguard.config import PlantConfig, ProcessorConfig
    from lineguard.inspection import ModelRegistry
    from lineguard.processors.scoring import BatchScorer, Work
    from lineguard.schemas import Frame, ImageLimits, new_frame_id
    from lineguard.schemas import image as imagecodec

    rng = np.random.default_rng(1)
    _train_tiled_baseline(tmp_path, rng)
    plant = PlantConfig.model_validate({"lines": {"line1": {"cameras": {
        "top": {"roi": list(ROI), "tiling": {"size": 32, "overlap": 8}}, "side": {}}}}})
    registry = ModelRegistry(tmp_path / "models")
    scorer = BatchScorer(ProcessorConfig(model_dir=tmp_path / "models", heatmaps="all"), ImageLimits(), registry,
                         plant=plant)
    engine = registry.get("widget", "line1").engine
    batches: list[int] = []
    real_score = engine.score
    engine.score = lambda images: batches.append(len(images)) or real_score(images)

    def frame(img, camera="top"):
        data, dtype, shape = imagecodec.encode(img, "png")
        return Work(Frame(frame_id=new_frame_id(), line_id="line1", camera_id=camera, product="widget",
                          captured_at_ns=time.time_ns(), seq=0, encoding="png", image=data, dtype=dtype,
                          shape=shape), time.time_ns())

    outside_roi = _plant_frame(rng, defect_at=(30, 1))  # x 1..5 lies left of the ROI: not inspected
    batch = [frame(_plant_frame(rng)), frame(_plant_frame(rng, defect_at=(40, 60))), frame(outside_roi),
             frame(_plant_frame(rng), camera="side")]
    normal, defect, ignored, side = scorer.score(batch)
    assert sum(batches) == 3 * 6 and batches[0] == 16  # the tiles of all frames, in full engine batches
    # Normal frames score at the threshold's level (it is the calibration frames' maximum, plus a margin);
    # the defect inside the ROI far above it, the one outside the ROI not at all.
    threshold = defect.verdict.threshold
    assert defect.verdict.is_defective and defect.verdict.score > 5 * threshold
    assert normal.verdict.score < 1.2 * threshold and ignored.verdict.score < 1.2 * threshold
    for outcome in (normal, defect, ignored):  # one verdict and one whole-frame heatmap per frame
        assert Image.open(io.BytesIO(outcome.heatmap.data)).size == (FRAME[1], FRAME[0])
        assert outcome.verdict.heatmap_key == outcome.heatmap.key
    # A camera cut differently from the model's training (here: whole frames) is refused, saying why.
    assert side.verdict is None and side.failure.reason == "scoring_failed"
    assert "differ from the model's training" in str(side.failure)


def test_the_inspection_api_scores_an_upload_with_the_models_regions(tmp_path):
    import io

    from PIL import Image

    from lineguard.api.inspection import InspectionError, inspect
    from lineguard.config import Settings
    from lineguard.inspection import LoadedModel
    from lineguard.engines.runtime import ScoringEngine

    rng = np.random.default_rng(2)
    _train_tiled_baseline(tmp_path, rng)
    engine = ScoringEngine(tmp_path / "models" / "widget")
    model = LoadedModel("widget", "widget", None, engine, 0.0, ())
    result = inspect(model, _plant_frame(rng, defect_at=(40, 60)), Settings(), None, want_heatmap=True)
    assert result.is_defective and result.score > 5 * result.threshold
    assert Image.open(io.BytesIO(result.heatmap_png)).size == (FRAME[1], FRAME[0])
    with pytest.raises(InspectionError, match="regions"):  # smaller than the model's ROI
        inspect(model, _plant_frame(rng)[:32], Settings(), None, want_heatmap=False)
