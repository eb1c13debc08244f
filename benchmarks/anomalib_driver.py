"""anomalib 2.7's PatchCore, fitted and scored for ``lineguard bench anomalib``.

Runs with the python of the separate anomalib virtualenv (``.cache/anomalib-venv``), so it must not
import lineguard: everything it needs comes on the command line, and it answers with files.

    python anomalib_driver.py fit   --spec SPEC.json --out DIR   # DIR/memory_bank.pt, DIR/fit.json
    python anomalib_driver.py score --spec SPEC.json --out DIR   # DIR/scores.npy, DIR/maps.npy, DIR/score.json
    python anomalib_driver.py export --spec SPEC.json --out DIR  # DIR/anomalib_patchcore.b{1,16}.onnx (optional)

SPEC.json: ``weights`` (torchvision MobileNetV2 state dict), ``layers``, ``input_size``, ``coreset_ratio``,
``num_neighbors``, ``train_paths``, ``test_paths``, ``train_batch``, ``batches`` (throughput batch sizes),
``trials``, ``seconds_per_trial``, ``seed`` (of the coreset's random first pick).

The model is anomalib's own ``Patchcore`` Lightning module with its default pre-processor (Resize to
``input_size`` with antialiasing, ImageNet normalisation) around the offline backbone as an ``nn.Module``
(anomalib then extracts the layers with torchvision's FX feature extractor, no timm download). Fitting
makes the calls ``Engine.fit`` makes for PatchCore, without a Trainer around them (no checkpointing,
logging or validation in the timed part): the torch model in training mode over every training batch,
which stores the patch embeddings, then ``Patchcore.fit()``, the k-center-greedy coreset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Offline before anything imports huggingface_hub or timm: nothing may be downloaded.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def backbone(weights: str) -> nn.Module:
    """torchvision's MobileNetV2 with the offline ImageNet weights: the network lineguard uses."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


def build(spec: dict[str, Any]) -> Any:
    """anomalib's Patchcore around the offline backbone; no evaluator/visualizer (metrics are computed by
    lineguard's code on the dumped scores), no post-processor (raw scores and maps)."""
    from anomalib.models import Patchcore

    size = tuple(spec["input_size"])
    return Patchcore(
        backbone=backbone(spec["weights"]),  # TimmFeatureExtractor takes an nn.Module (torchvision FX)
        layers=list(spec["layers"]),
        coreset_sampling_ratio=float(spec["coreset_ratio"]),
        num_neighbors=int(spec["num_neighbors"]),
        pre_processor=Patchcore.configure_pre_processor(image_size=size),
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )


def load_batch(paths: list[str], pre_processor: nn.Module) -> torch.Tensor:
    """Images as anomalib feeds them: RGB float in [0, 1], then its pre-processor (resize + normalise),
    one image at a time because the source sizes differ."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)
        out.append(pre_processor(tensor))
    return torch.cat(out)


def raw_batch(paths: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Images already at the input size, in [0, 1] (the 'with pre-processing' throughput input)."""
    out = []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def fit(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    # KCenterGreedy starts from a torch.randint pick: seeded, a rerun gives the same bank (unseeded, pixel
    # AUROC moved by +-0.0001 between runs here).
    torch.manual_seed(int(spec.get("seed", 0)))
    started = time.perf_counter()
    module = build(spec)  # includes importing anomalib (lineguard's fit time includes importing torch)
    build_s = time.perf_counter() - started
    model = module.model
    pre = module.pre_processor
    paths = list(spec["train_paths"])
    model.train()  # training mode: PatchcoreModel.forward stores the embeddings instead of scoring
    with torch.no_grad():
        for start in range(0, len(paths), int(spec["train_batch"])):
            model(load_batch(paths[start:start + int(spec["train_batch"])], pre))
    extract_s = time.perf_counter() - started
    n_patches = sum(int(e.shape[0]) for e in model.embedding_store)
    module.fit()  # coreset subsampling (KCenterGreedy) of the stored embeddings
    fit_s = time.perf_counter() - started
    bank = model.memory_bank.detach().clone()
    torch.save(bank, out / "memory_bank.pt")
    result = {
        "fit_s": round(fit_s, 3),
        "build_s": round(build_s, 3),
        "feature_extraction_s": round(extract_s - build_s, 3),  # image loading + embeddings
        "coreset_s": round(fit_s - extract_s, 3),
        "n_fit_images": len(paths),
        "n_patches": n_patches,
        "memory_bank_size": int(bank.shape[0]),
        "embedding_dim": int(bank.shape[1]),
        "peak_rss_mb_self": peak_rss_mb(),
    }
    return result


class _Scores(nn.Module):
    """anomalib's torch model with a plain tuple output, for the ONNX exporter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images)
        return out.pred_score, out.anomaly_map


def export_onnx(module: Any, path: Path, size: tuple[int, int], batches: list[int]) -> dict[str, Any]:
    """The fitted torch model (normalised tensor in, score and map out) as ONNX, for a same-runtime check.

    One graph per batch size, with static shapes: tracing unrolls PatchcoreModel.nearest_neighbors' Python
    loop over 1024-patch chunks, so a graph traced at one batch size is only right at that size.
    """
    import warnings

    model = module.model.eval()
    started = time.perf_counter()
    try:
        for batch in batches:
            target = path.with_name(f"{path.stem}.b{batch}.onnx")
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Scores(model), (torch.zeros(batch, 3, *size),), str(target), dynamo=False,
                                  opset_version=17, input_names=["image"], output_names=["score", "anomaly_map"])
    except Exception as exc:  # optional figure: report why instead of failing the benchmark
        return {"file": None, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"file": path.name, "export_s": round(time.perf_counter() - started, 2)}


def trials(fn: Callable[[], Any], n_images: int, count: int, seconds: float) -> dict[str, float]:
    """images/s, best and median of ``count`` timed trials of about ``seconds`` each, after two warm-ups, and
    the process CPU time per image over all trials (less sensitive to other processes than wall time)."""
    for _ in range(2):
        fn()
    start = time.perf_counter()
    fn()
    repeats = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    cpu0 = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rates.append(n_images * repeats / (time.perf_counter() - start))
    cpu_ms = 1000.0 * (time.process_time() - cpu0) / (n_images * repeats * count)
    return {"best": round(max(rates), 2), "median": round(statistics.median(rates), 2),
            "cpu_ms_per_image": round(cpu_ms, 2)}


def fitted(spec: dict[str, Any], model_dir: Path) -> Any:
    """The module rebuilt with the memory bank the fit step saved, in eval mode."""
    module = build(spec)
    module.model.memory_bank = torch.load(model_dir / "memory_bank.pt", map_location="cpu", weights_only=True)
    return module.eval()


def score(spec: dict[str, Any], model_dir: Path, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    module = fitted(spec, model_dir)
    model = module.model
    pre = module.pre_processor
    load_s = time.perf_counter() - started
    size = tuple(spec["input_size"])
    paths = list(spec["test_paths"])
    scores, maps = [], []
    with torch.inference_mode():
        for start in range(0, len(paths), 16):
            result = model(load_batch(paths[start:start + 16], pre))
            scores.append(result.pred_score.reshape(-1).numpy())
            maps.append(result.anomaly_map[:, 0].numpy())
        np.save(out / "scores.npy", np.concatenate(scores).astype(np.float32))
        np.save(out / "maps.npy", np.concatenate(maps).astype(np.float32))

        throughput: dict[str, Any] = {}
        for batch in spec["batches"]:
            chosen = [paths[i % len(paths)] for i in range(batch)]
            tensor = load_batch(chosen, pre)  # ready, normalised: the model alone is timed
            raw = raw_batch(chosen, size)  # [0, 1] at input size: pre-processor + model, as module(x) runs
            throughput[str(batch)] = {
                "model_images_per_s": trials(lambda: model(tensor), batch, spec["trials"], spec["seconds_per_trial"]),
                "module_images_per_s": trials(lambda: module(raw), batch, spec["trials"],
                                              spec["seconds_per_trial"]),
            }
    import anomalib
    import torchvision

    return {
        "load_s": round(load_s, 3),
        "n_test_images": len(paths),
        "batches": throughput,
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "anomalib": anomalib.__version__,
                     "torch": torch.__version__, "torchvision": torchvision.__version__},
        "peak_rss_mb_self": peak_rss_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["fit", "score", "export"])
    parser.add_argument("--spec", required=True, help="JSON file of settings and image paths")
    parser.add_argument("--model", help="folder written by the fit step (score only)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model or args.out)
    if args.step == "fit":
        result = fit(spec, out)
    elif args.step == "score":
        result = score(spec, model_dir, out)
    else:
        result = export_onnx(fitted(spec, model_dir), out / "anomalib_patchcore.onnx", tuple(spec["input_size"]),
                             list(spec["batches"]))
    (out / f"{args.step}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
