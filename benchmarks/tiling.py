"""``lineguard bench tiling``: small defects on large frames, whole frame resized vs tiles, side by side.

A seeded generator makes 2,448 x 2,048 frames of a brushed, drilled metal plate (line-camera size) with
10-40 px defects: pits, scratches and stains. PatchCore is trained twice on the same normal frames, once on
the frame resized to its 256 px input (what every camera got before regions) and once on 512 px tiles
overlapping by 64 px (``lineguard train --tile 512:64``), each with thresholds calibrated on its own frame
scores. Both score the same test frames through :func:`lineguard.engines.regions.score_frames`, the
processors' code path; printed: image AUROC, and frames/s from decoded frame to frame score and stitched map
(the cutting, resizing and stitching included, PNG reading not).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

FRAME_HEIGHT, FRAME_WIDTH = 2048, 2448
DEFECT_KINDS = ("pit", "scratch", "stain")


@dataclass
class TilingBenchConfig:
    n_train: int = 24  # normal frames; a fifth is held out for calibration
    n_test_good: int = 20
    n_test_defect: int = 20
    tile: int = 512
    overlap: int = 64
    input_size: int = 256
    coreset_ratio: float = 0.01
    tiles_coreset_ratio: float | None = None  # the tiled leg's, when it should differ (its bank grows with the tiles)
    frames_per_call: int = 8  # frames handed to score_frames at once (the processor's batch)
    seed: int = 0
    work_dir: Path | None = None


class PlateCamera:
    """Frame ``index`` of a seeded run: a drilled plate with brushing marks, lighting drift and sensor noise."""

    def __init__(self, seed: int = 0, height: int = FRAME_HEIGHT, width: int = FRAME_WIDTH) -> None:
        self.seed, self.height, self.width = seed, height, width
        rng = np.random.default_rng((seed, 1))
        # Fixture: the same hole pattern on every plate (each frame jitters it by a pixel or two).
        self.holes = [(x, y, r) for x in np.linspace(220, width - 220, 6) for y in np.linspace(220, height - 220, 5)
                      for r in [float(rng.uniform(34, 46))]]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self._xx, self._yy = xx, yy

    def render(self, index: int, defect: str | None) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 frame, uint8 mask with 255 on the defect)."""
        rng = np.random.default_rng((self.seed, 2, index))
        h, w = self.height, self.width
        # Brushing: noise stretched along x (every plate's own), a gentle lighting gradient, a little gain jitter.
        grain = rng.standard_normal((h // 4, w // 32)).astype(np.float32)
        brushed = cv2.resize(grain, (w, h), interpolation=cv2.INTER_CUBIC)
        light = 150.0 + 20.0 * (self._xx / w) - 12.0 * (self._yy / h) + float(rng.uniform(-4, 4))
        gray = light + 6.0 * brushed
        dx, dy = rng.uniform(-2, 2, 2)
        for x, y, r in self.holes:
            cv2.circle(gray, (int(round(x + dx)), int(round(y + dy))), int(round(r)), 45.0, -1, cv2.LINE_AA)
            cv2.circle(gray, (int(round(x + dx)), int(round(y + dy))), int(round(r)) + 3, 185.0, 2, cv2.LINE_AA)
        mask = np.zeros((h, w), np.uint8)
        tint = np.array([1.0, 1.0, 1.0], np.float32)
        stain = None
        if defect is not None:
            stain = self._defect(defect, rng, gray, mask)
        rgb = gray[:, :, None] * tint[None, None, :]
        if stain is not None:
            alpha, colour = stain
            rgb += alpha[:, :, None] * (colour[None, None, :] - rgb)
        rgb += rng.normal(0.0, 3.0, (h, w, 1)).astype(np.float32)  # sensor noise
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mask

    def _free_spot(self, rng: np.random.Generator, margin: int) -> tuple[int, int]:
        """A point on bare metal, away from the holes and the frame's edge."""
        while True:
            x, y = int(rng.integers(margin, self.width - margin)), int(rng.integers(margin, self.height - margin))
            if all(math.hypot(x - hx, y - hy) > hr + margin + 10 for hx, hy, hr in self.holes):
                return x, y

    def _defect(self, kind: str, rng: np.random.Generator, gray: np.ndarray, mask: np.ndarray):  # noqa: ANN202
        size = float(rng.uniform(10, 40))  # the defect's extent in frame pixels
        x, y = self._free_spot(rng, 60)
        if kind == "pit":  # a dark round pit with a bright rim on the lit side
            r = int(round(size / 2))
            cv2.circle(gray, (x, y), r, 70.0, -1, cv2.LINE_AA)
            cv2.ellipse(gray, (x, y), (r, r), 0, 200, 290, 215.0, 2, cv2.LINE_AA)
            cv2.circle(mask, (x, y), r + 2, 255, -1)
            return None
        if kind == "scratch":  # a thin bright line
            angle = rng.uniform(0, math.pi)
            ex, ey = size / 2 * math.cos(angle), size / 2 * math.sin(angle)
            p0, p1 = (int(round(x - ex)), int(round(y - ey))), (int(round(x + ex)), int(round(y + ey)))
            cv2.line(gray, p0, p1, 225.0, 2, cv2.LINE_AA)
            cv2.line(mask, p0, p1, 255, 4)
            return None
        # stain: a translucent rust blot
        alpha = np.zeros(gray.shape, np.float32)
        cv2.ellipse(alpha, (x, y), (int(size / 2), int(size / 3)), float(rng.uniform(0, 180)), 0, 360, 0.7, -1,
                    cv2.LINE_AA)
        mask[alpha > 0.1] = 255
        return alpha, np.array([150.0, 90.0, 45.0], np.float32)


def write_dataset(root: Path, cfg: TilingBenchConfig) -> dict[str, int]:
    """MVTec layout: train/good, test/good, test/<kind> and ground_truth/<kind>; the same files for a seed."""
    camera = PlateCamera(cfg.seed)

    def save(folder: Path, name: str, array: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(folder / name, format="PNG", compress_level=1)

    for i in range(cfg.n_train):
        save(root / "train" / "good", f"{i:03d}.png", camera.render(i, None)[0])
    for i in range(cfg.n_test_good):
        save(root / "test" / "good", f"{i:03d}.png", camera.render(100_000 + i, None)[0])
    for i in range(cfg.n_test_defect):
        kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
        image, mask = camera.render(200_000 + i, kind)
        save(root / "test" / kind, f"{i:03d}.png", image)
        save(root / "ground_truth" / kind, f"{i:03d}_mask.png", mask)
    return {"train": cfg.n_train, "test_good": cfg.n_test_good, "test_defect": cfg.n_test_defect}


def _evaluate(model_dir: Path, data: Path, frames_per_call: int) -> dict[str, Any]:
    from lineguard.engines.data import load_rgb, test_samples
    from lineguard.engines.evaluation_metrics import auroc
    from lineguard.engines.regions import Regions, score_frames
    from lineguard.engines.runtime import ScoringEngine

    engine = ScoringEngine(model_dir, max_batch=16)
    regions = Regions.from_manifest(engine.manifest.regions, model_dir)
    size = (engine.manifest.input.height, engine.manifest.input.width)
    samples = test_samples(data)
    scores, seconds = [], 0.0
    for start in range(0, len(samples), frames_per_call):
        frames = [load_rgb(s.path) for s in samples[start:start + frames_per_call]]
        t0 = time.perf_counter()
        s, _ = score_frames(engine.score, frames, regions, size, engine.max_batch)
        seconds += time.perf_counter() - t0
        scores.append(s)
    scores = np.concatenate(scores)
    labels = np.array([s.is_defective for s in samples])
    threshold = engine.threshold
    return {"image_auroc": round(float(auroc(scores, labels)), 4),
            "frames_per_s": round(len(samples) / seconds, 2),
            "caught": int((scores[labels] > threshold).sum()), "defective": int(labels.sum()),
            "false_alarms": int((scores[~labels] > threshold).sum()), "good": int((~labels).sum()),
            "threshold": round(float(threshold), 4)}


def run(cfg: TilingBenchConfig) -> dict[str, Any]:
    from lineguard.engines.regions import Regions
    from lineguard.engines.training import train

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(cfg.work_dir or tmp)
        data = work / "plates"
        t0 = time.perf_counter()
        counts = write_dataset(data, cfg)
        generate_s = time.perf_counter() - t0
        options = {"input_size": cfg.input_size, "coreset_ratio": cfg.coreset_ratio, "progress": False}
        legs = {"resize": Regions(), "tiles": Regions(tile_size=cfg.tile, tile_overlap=cfg.overlap)}
        result: dict[str, Any] = {"config": {**asdict(cfg), "work_dir": str(cfg.work_dir) if cfg.work_dir else None,
                                             "frame": [FRAME_WIDTH, FRAME_HEIGHT]},
                                  "dataset": counts, "generate_s": round(generate_s, 1)}
        for leg, regions in legs.items():
            started = time.perf_counter()
            model_dir = work / f"model-{leg}"
            ratio = cfg.tiles_coreset_ratio if leg == "tiles" and cfg.tiles_coreset_ratio else cfg.coreset_ratio
            manifest_path = train("patchcore", data, model_dir, name="plate", version=leg, seed=cfg.seed,
                                  regions=regions, **{**options, "coreset_ratio": ratio})
            fit_s = time.perf_counter() - started
            manifest = json.loads(manifest_path.read_text())
            figures = _evaluate(model_dir, data, cfg.frames_per_call)
            figures.update(train_s=round(fit_s, 1), model_inputs=manifest["training"]["n_inputs"],
                           memory_bank=manifest["extra"].get("memory_bank_size"), regions=regions.describe())
            result[leg] = figures
    return result


def markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    rows = [("image AUROC", "image_auroc"), ("frames/s (score + cut + stitch)", "frames_per_s"),
            ("defective caught at the calibrated threshold", "caught"), ("false alarms", "false_alarms"),
            ("model inputs fitted on", "model_inputs"), ("memory bank (coreset of the inputs' patches)", "memory_bank"),
            ("train s", "train_s")]
    lines = [f"PatchCore on {cfg['frame'][0]} x {cfg['frame'][1]} frames with 10-40 px defects "
             f"({result['dataset']['train']} normal training frames, {result['dataset']['test_good']} good + "
             f"{result['dataset']['test_defect']} defective test frames, {cfg['input_size']} px input, "
             f"coreset {cfg['coreset_ratio']}"
             + (f" (tiles: {cfg['tiles_coreset_ratio']})" if cfg.get("tiles_coreset_ratio") else "")
             + f", seed {cfg['seed']})", "",
             f"| | resized whole frame | tiles {cfg['tile']} overlap {cfg['overlap']} |", "|---|---|---|"]
    for label, key in rows:
        a, b = result["resize"][key], result["tiles"][key]
        if key == "caught":
            a, b = f"{a}/{result['resize']['defective']}", f"{b}/{result['tiles']['defective']}"
        elif key == "false_alarms":
            a, b = f"{a}/{result['resize']['good']}", f"{b}/{result['tiles']['good']}"
        lines.append(f"| {label} | {a} | {b} |")
    return "\n".join(lines)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    return {f"{leg}_{key}": result[leg][key] for leg in ("resize", "tiles") for key in ("image_auroc", "frames_per_s")}


def write_outputs(result: dict[str, Any], out: str | None) -> None:
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
        Path(out).with_suffix(".md").write_text(markdown(result) + "\n")
