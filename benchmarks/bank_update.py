"""``lineguard bench bank-update``: learning confirmed-good images by a memory-bank update against a full refit.

A slice of the normal training images is held back as "new normal variation" (by default the brightest
``slice_fraction``: on magnetic_tile the tiles' mean grey level runs from 49 to 203, so the brightest fifth
is lighting the rest never shows; ``--slice random`` for a random slice). The slice is split in two
halves that interleave by brightness (so both span the same range): the ADDED half is what an operator
confirms as good after false alarms, the HELD half is never learnt and measures whether the model
generalised to the variation rather than memorised the added images.

Three models, scored in the same run with the same code (``ScoringEngine``, each at its own calibrated
threshold):

* ``base``: ``lineguard train`` on the rest of the images;
* ``updated``: ``base`` + the added half by :func:`~lineguard.engines.patchcore.update.update_model`
  (threshold recalibrated on base's held-out normals);
* ``refit``: ``lineguard train`` on the rest + the added half, what the update replaces.

For each: false-alarm rate on the held half (and on the added half), image AUROC on the test split,
and the wall time to produce it (fit or update, calibration and export included).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineguard.engines.data import load_rgb, normal_images, test_samples
from lineguard.engines.evaluation_metrics import auroc

from .report import write_report


@dataclass
class BankUpdateConfig:
    data: Path
    slice_by: str = "brightness"  # "brightness": the brightest slice_fraction; "random"
    slice_fraction: float = 0.2
    add_fraction: float = 0.5  # of the slice, learnt by the update; the rest is held for measuring
    size: int = 256
    coreset_ratio: float = 0.01
    seed: int = 0
    work_dir: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # more PatchCore options for both fits


def split_slice(paths: list[Path], cfg: BankUpdateConfig) -> tuple[list[Path], list[Path], list[Path]]:
    """(rest, added, held): the slice of ``slice_fraction`` of ``paths`` split into its added and held parts."""
    n_slice = max(2, int(round(len(paths) * cfg.slice_fraction)))
    if cfg.slice_by == "brightness":
        brightness = np.array([load_rgb(p).mean() for p in paths])
        order = np.argsort(-brightness, kind="stable")  # brightest first
    elif cfg.slice_by == "random":
        order = np.random.default_rng(cfg.seed).permutation(len(paths))
    else:
        raise ValueError(f"slice_by must be brightness or random, not {cfg.slice_by!r}")
    slice_order, rest = order[:n_slice], order[n_slice:]
    # Every k-th image of the slice (in brightness order) to the added half: both halves span the slice.
    n_add = max(1, min(n_slice - 1, int(round(n_slice * cfg.add_fraction))))
    take = np.zeros(n_slice, dtype=bool)
    take[np.round(np.linspace(0, n_slice - 1, n_add)).astype(int)] = True
    return (sorted(paths[i] for i in rest), sorted(paths[i] for i in slice_order[take]),
            sorted(paths[i] for i in slice_order[~take]))


def _link_folder(folder: Path, paths: list[Path]) -> Path:
    """A folder of links to ``paths`` under their own names (the fingerprint and a later recalibration see them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    return folder


def _false_alarms(engine: Any, paths: list[Path], batch: int = 16) -> tuple[float, int]:
    scores = np.concatenate([engine.score([load_rgb(p) for p in paths[i:i + batch]])[0]
                             for i in range(0, len(paths), batch)])
    flagged = int((scores > engine.threshold).sum())
    return flagged / len(paths), flagged


def _measure(model_dir: Path, added: list[Path], held: list[Path], samples: list[Any]) -> dict[str, Any]:
    from lineguard.engines.evaluate import score_test_set
    from lineguard.engines.runtime import ScoringEngine

    engine = ScoringEngine(model_dir)
    fa_held, n_held = _false_alarms(engine, held)
    fa_added, n_added = _false_alarms(engine, added)
    scored = score_test_set(engine, samples)
    labels = np.array([s.is_defective for s in scored.samples])
    # The learning itself (patch features + coreset), apart from what fit and update both pay around it
    # (loading, export, scoring the calibration images): the fit's figures, or the update's in its lineage.
    extra = engine.manifest.extra
    learnt = extra["lineage"][-1] if extra.get("lineage") else extra
    return {"threshold": round(engine.threshold, 5), "memory_bank_size": extra.get("memory_bank_size"),
            "learn_s": round(learnt["feature_extraction_s"] + learnt["coreset_s"], 1),
            "false_alarm_rate_held": round(fa_held, 4), "false_alarms_held": n_held,
            "false_alarm_rate_added": round(fa_added, 4), "false_alarms_added": n_added,
            "image_auroc": round(auroc(scored.scores, labels), 4)}


def run(cfg: BankUpdateConfig) -> dict[str, Any]:
    from lineguard.engines.patchcore.update import update_model
    from lineguard.engines.training import train

    paths = normal_images(cfg.data)
    rest, added, held = split_slice(paths, cfg)
    samples = test_samples(cfg.data)
    work = cfg.work_dir or Path(tempfile.mkdtemp(prefix="lineguard-bench-bank-"))
    options = {"input_size": (cfg.size, cfg.size), "coreset_ratio": cfg.coreset_ratio, "progress": False,
               **cfg.options}
    rows: dict[str, dict[str, Any]] = {}

    t0 = time.perf_counter()
    # A held-out split (calibration_folds=0), as the figures were measured: the update recalibrates on it.
    base = train("patchcore", _link_folder(work / "images-rest", rest), work / "base", version="base",
                 seed=cfg.seed, calibration_folds=0, **options).parent
    rows["base"] = {"images": f"{len(rest)} (rest)", "seconds": round(time.perf_counter() - t0, 1)}

    t0 = time.perf_counter()
    updated, lineage = update_model(base, _link_folder(work / "images-added", added), work / "updated",
                                    version="updated")
    rows["updated"] = {"images": f"{len(rest)} + {len(added)} added", "seconds": round(time.perf_counter() - t0, 1)}

    t0 = time.perf_counter()
    refit = train("patchcore", _link_folder(work / "images-rest-and-added", rest + added), work / "refit",
                  version="refit", seed=cfg.seed, calibration_folds=0, **options).parent
    rows["refit"] = {"images": f"{len(rest) + len(added)} (rest + added)",
                     "seconds": round(time.perf_counter() - t0, 1)}

    for name, folder in (("base", base), ("updated", updated.parent), ("refit", refit)):
        rows[name].update(_measure(folder, added, held, samples))
    base_row, upd, ref = rows["base"], rows["updated"], rows["refit"]
    return {
        "data": str(cfg.data), "slice_by": cfg.slice_by, "slice_fraction": cfg.slice_fraction,
        "n_train": len(paths), "n_rest": len(rest), "n_added": len(added), "n_held": len(held),
        "n_test": len(samples), "size": cfg.size, "coreset_ratio": cfg.coreset_ratio,
        "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
        "slice_brightness": _brightness_range(added + held), "rest_brightness": _brightness_range(rest),
        "models": rows, "update": {k: lineage[k] for k in (
            "patches_extracted", "max_picks", "patches_added", "bank_size_before", "bank_size_after",
            "coverage_radius", "uncovered_patches_before", "max_distance_before", "max_distance_after",
            "feature_extraction_s", "coreset_s", "threshold")},
        "summary": {
            "false_alarm_rate_held_before": base_row["false_alarm_rate_held"],
            "false_alarm_rate_held_after": upd["false_alarm_rate_held"],
            "false_alarm_rate_held_refit": ref["false_alarm_rate_held"],
            "image_auroc_before": base_row["image_auroc"], "image_auroc_after": upd["image_auroc"],
            "image_auroc_refit": ref["image_auroc"],
            "update_s": upd["seconds"], "refit_s": ref["seconds"],
            "refit_over_update": round(ref["seconds"] / upd["seconds"], 2) if upd["seconds"] else None,
            "update_learn_s": upd["learn_s"], "refit_learn_s": ref["learn_s"],
            "auroc_not_lower_after_update": upd["image_auroc"] >= base_row["image_auroc"],
        },
        "work_dir": str(work),
    }


def _brightness_range(paths: list[Path]) -> list[float]:
    values = [float(load_rgb(p).mean()) for p in paths]
    return [round(min(values), 1), round(float(np.median(values)), 1), round(max(values), 1)]


def markdown(result: dict[str, Any]) -> str:
    u = result["update"]
    out = [f"PatchCore bank update on `{result['data']}`: {result['n_train']} normal training images, the "
           f"{'brightest' if result['slice_by'] == 'brightness' else 'random'} {result['slice_fraction']:.0%} held "
           f"back as new variation (mean grey min/median/max {result['slice_brightness']} against the rest's "
           f"{result['rest_brightness']}), {result['n_added']} of them added, {result['n_held']} held; "
           f"{result['n_test']} test images; {result['size']} px, coreset {result['coreset_ratio']:.0%}, "
           f"{result['cpu_count']} CPUs (load {result['load_average_1m']})", "",
           "| model | fitted on | time s (features + coreset s) | memory bank | threshold | false alarms, held half | "
           "false alarms, added half | image AUROC (test) |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in result["models"].items():
        out.append(f"| {name} | {r['images']} | {r['seconds']} ({r['learn_s']}) | {r['memory_bank_size']} | "
                   f"{r['threshold']} | "
                   f"{r['false_alarm_rate_held']:.1%} ({r['false_alarms_held']}/{result['n_held']}) | "
                   f"{r['false_alarm_rate_added']:.1%} ({r['false_alarms_added']}/{result['n_added']}) | "
                   f"{r['image_auroc']:.4f} |")
    out += ["", f"Update: {u['patches_extracted']} new patches, {u['uncovered_patches_before']} farther from the bank "
                f"than its coverage radius {u['coverage_radius']:.3f}; {u['patches_added']} added (budget "
                f"{u['max_picks']}), bank {u['bank_size_before']} → {u['bank_size_after']}; farthest new patch "
                f"{u['max_distance_before']:.3f} → {u['max_distance_after']:.3f}; "
                f"features {u['feature_extraction_s']} s, coreset {u['coreset_s']} s; "
                f"threshold {u['threshold']['action']}."]
    return "\n".join(out)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown)
