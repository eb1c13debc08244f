"""``lineguard bench fit``: PatchCore fit time and memory against the number of training images, in one run.

The guides warn that PatchCore's memory bank grows linearly with the training set. Here each size is a
separate ``lineguard train`` process on the first N normal images (sorted by name), measured from outside
(:func:`run_measured`: wall, CPU, the child's own peak RSS), with what the fit itself recorded in the
manifest: patches extracted, memory bank size, time in feature extraction and in the coreset. Sizes run
smallest first, so a run cut short still has the small end of the curve.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineguard.engines.data import normal_images

from .measure import run_measured
from .report import pyplot, save_figure, write_report


@dataclass
class FitScalingConfig:
    data: Path
    sizes: tuple[int, ...] = ()  # default: 1/8, 1/4, 1/2 and all of the training images
    model: str = "patchcore"
    options: list[str] = field(default_factory=list)  # --option KEY=VALUE passed to train
    max_rss_mb: float = 8000.0
    work_dir: Path | None = None


def default_sizes(total: int) -> tuple[int, ...]:
    return tuple(sorted({max(8, total // 8), max(8, total // 4), max(8, total // 2), total}))


def run(cfg: FitScalingConfig) -> dict[str, Any]:
    images = normal_images(cfg.data)
    sizes = tuple(s for s in (cfg.sizes or default_sizes(len(images))) if s <= len(images))
    if not sizes:
        raise ValueError(f"no size fits the {len(images)} training images under {cfg.data}")
    work = cfg.work_dir or Path(tempfile.mkdtemp(prefix="lineguard-bench-fit-"))
    rows = []
    for size in sorted(sizes):
        subset = work / f"images-{size}"
        subset.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(images[:size]):  # links, numbered: a fresh folder of exactly these images
            link = subset / f"{i:05d}{path.suffix.lower()}"
            if not link.exists():
                link.symlink_to(path.resolve())
        out = work / f"model-{size}"
        measured = run_measured([sys.executable, "-m", "lineguard.cli", "--log-level", "WARNING", "train",
                                 "--model", cfg.model, "--data", str(subset), "--out", str(out),
                                 "--option", "progress=false", *[a for o in cfg.options for a in ("--option", o)]],
                                work / f"train-{size}.log", max_rss_mb=cfg.max_rss_mb)
        manifest = json.loads((out / "manifest.json").read_text())
        extra, training = manifest.get("extra", {}), manifest.get("training", {})
        rows.append({
            "images": size, "fit_images": training.get("n_images"), "wall_s": measured.wall_s,
            "cpu_s": measured.cpu_s, "peak_rss_mb": measured.peak_rss_mb,
            "n_patches": extra.get("n_patches"), "memory_bank_size": extra.get("memory_bank_size"),
            "embedding_dim": extra.get("embedding_dim"),
            "feature_extraction_s": extra.get("feature_extraction_s"), "coreset_s": extra.get("coreset_s"),
            "onnx_mb": round((out / "model.onnx").stat().st_size / 2**20, 2),
        })
    return {"data": str(cfg.data), "model": cfg.model, "options": cfg.options, "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2), "sizes": rows, "work_dir": str(work)}


def markdown(result: dict[str, Any]) -> str:
    out = [f"{result['model']} fit on `{result['data']}` ({result['cpu_count']} CPUs; options "
           f"{', '.join(result['options']) or 'defaults'})", "",
           "| images | fit images | wall s | CPU s | peak RSS MB | patches | memory bank | features s | coreset s "
           "| model.onnx MB |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["sizes"]:
        out.append(f"| {r['images']} | {r['fit_images']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | "
                   f"{r['n_patches']} | {r['memory_bank_size']} | {r['feature_extraction_s']} | {r['coreset_s']} | "
                   f"{r['onnx_mb']} |")
    return "\n".join(out)


def plot(result: dict[str, Any], path: Path) -> None:
    """Fit time (whole, and its coreset part) and peak RSS against the number of training images."""
    plt = pyplot()
    rows = result["sizes"]
    images = [r["images"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(images, [r["wall_s"] for r in rows], marker="o", label="whole fit (wall)")
    left.plot(images, [r["coreset_s"] for r in rows], marker="s", label="coreset")
    left.plot(images, [r["feature_extraction_s"] for r in rows], marker="^", label="feature extraction")
    left.set_xlabel("training images")
    left.set_ylabel("seconds")
    left.legend()
    right.plot(images, [r["peak_rss_mb"] for r in rows], marker="o", color="C3")
    right.set_xlabel("training images")
    right.set_ylabel("peak RSS (MB)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['model']} fit on {Path(result['data']).name}")
    save_figure(fig, path)


def write_outputs(result: dict[str, Any], json_path: str | None) -> None:
    write_report(result, json_path, markdown, plot)
