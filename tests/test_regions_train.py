"""`lineguard train --tile/--roi` with PatchCore on small generated images: trained on tiles, scored by frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.train

from engine_images import defect_image, needs_weights, normal_image, write_mvtec  # noqa: E402


@needs_weights("mobilenet_v2")
def test_train_cli_on_tiles_records_regions_and_frame_scores_rank_defects(tmp_path: Path) -> None:
    from lineguard.cli import main
    from lineguard.engines.regions import Regions, plan_frame, score_frames
    from lineguard.engines.runtime import ScoringEngine

    data = write_mvtec(tmp_path / "data", n_train=10, size=128)
    out = tmp_path / "model"
    assert main(["train", "--model", "patchcore", "--data", str(data), "--out", str(out), "--size", "64",
                 "--roi", "8,8,112,112", "--tile", "64:16",
                 "--option", "coreset_ratio=0.1", "--option", "progress=false"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["regions"] == {"roi": [8, 8, 112, 112], "tiling": {"size": 64, "overlap": 16},
                                   "ignore_mask_sha256": None}
    regions = Regions.from_manifest(manifest["regions"])
    tiles_per_frame = len(plan_frame(regions, (128, 128), (64, 64)).tiles)
    assert tiles_per_frame == 4  # 112 px in 64 px tiles stepping 48: 0 and 48 per side
    assert manifest["training"]["n_inputs"] == manifest["training"]["n_images"] * tiles_per_frame
    assert manifest["calibration"]["n_normal"] == manifest["training"]["n_calibration"] == 2  # frames, not tiles

    engine = ScoringEngine(out)
    rng = np.random.default_rng(5)
    normals = [normal_image(rng, 128) for _ in range(4)]
    defects = [defect_image(rng, 128, kind)[0] for kind in ("blob", "scratch", "blob", "scratch")]
    scores, maps = score_frames(engine.score, normals + defects, regions, (64, 64))
    assert scores.shape == (8,) and all(m.shape == (1, 128, 128) for m in maps)  # 64 px per 64 px tile: scale 1
    assert scores[4:].min() > scores[:4].max()
