"""``lineguard bench engine|pipeline|fit|anomalib|tiling|bank-update``: figures measured side by side in one run,
as JSON + Markdown."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lineguard.cli_options import add_output_file
from lineguard.config import Settings


def _pipeline(args: argparse.Namespace, settings: Settings) -> int:
    from lineguard.deploy.stack import LocalStack

    from .pipeline import PipelineBenchConfig, markdown, run, write_outputs

    if args.brokers:
        settings.stack.brokers = args.brokers
    stack = LocalStack.from_settings(settings)
    started_here = stack.running("kafka") is None
    info = stack.up(with_s3=False)
    settings.kafka.bootstrap_servers = info["kafka_bootstrap"]
    workers = [int(w) for w in str(args.workers).split(",")]
    cfg = PipelineBenchConfig(lines=args.lines, frames=args.frames, size=args.size,
                              model_dir=Path(args.model_dir) if args.model_dir else None, product=args.product,
                              data=Path(args.data) if args.data else None, defect_share=args.defect_share,
                              max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                              workers=workers[0], more_workers=tuple(workers[1:]),
                              latency_seconds=args.latency_seconds, poison_share=args.poison_share)
    if (args.brokers or 1) > 1:
        return _pipeline_cluster(settings, cfg, tuple(workers), args.out, stack if started_here else None)
    try:
        result = run(settings, cfg)
    finally:
        if started_here:
            stack.down()
    write_outputs(result, args.out)
    print(markdown(result))
    print(json.dumps({k: result[k] for k in ("pipeline_fps", "engine_fps", "kafka_fps", "p50_capture_to_verdict_ms",
                                             "p99_capture_to_verdict_ms", "p99_capture_to_row_ms", "max_wait_ms",
                                             "batch_scoring_ms")}))
    return 0


def _pipeline_cluster(settings: Settings, cfg: Any, workers: tuple[int, ...], out: str | None,
                      stack_to_stop: Any) -> int:
    """``bench pipeline --brokers N``: RF 1 against RF 3 per worker count (``stack_to_stop``: started here)."""
    from . import pipeline_cluster

    try:
        result = pipeline_cluster.run(settings, cfg, workers)
    finally:
        if stack_to_stop is not None:
            stack_to_stop.down()
    pipeline_cluster.write_outputs(result, out)
    print(pipeline_cluster.markdown(result))
    return 0


def _anomalib(args: argparse.Namespace, settings: Settings) -> int:
    from .anomalib_compare import CompareConfig, run
    from .anomalib_report import markdown, write_outputs

    cfg = CompareConfig(data=Path(args.data), input_size=args.size, layers=tuple(args.layers.split(",")),
                        coreset_ratio=args.coreset_ratio, match_fit_images=args.match_fit_images,
                        trials=args.trials, seconds_per_trial=args.seconds_per_trial, onnx=not args.no_onnx,
                        max_rss_mb=args.max_rss_mb,
                        venv=Path(args.venv) if args.venv else None,
                        work_dir=Path(args.work_dir) if args.work_dir else None)
    result = run(cfg)
    write_outputs(result, args.out)
    print(markdown(result))
    print(json.dumps({k: result[k] for k in ("throughput_ratio_b16", "throughput_ratio_b1", "image_auroc_delta",
                                             "pixel_auroc_delta", "acceptance")}))
    return 0


def _fit(args: argparse.Namespace, settings: Settings) -> int:
    from .fit_scaling import FitScalingConfig, markdown, run, write_outputs

    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else ()
    result = run(FitScalingConfig(data=Path(args.data), sizes=sizes, model=args.model, options=args.option or [],
                                  max_rss_mb=args.max_rss_mb))
    write_outputs(result, args.out)
    print(markdown(result))
    return 0


def _engine(args: argparse.Namespace, settings: Settings) -> int:
    from .engine import markdown, run, write_outputs

    batches = tuple(int(b) for b in args.batches.split(","))
    if args.openvino:
        return _engine_openvino(args, batches)
    result = run(args.model, batches=batches, threads=args.threads, budget_s=args.seconds, data=args.data,
                 int8=args.int8)
    write_outputs(result, args.out)
    print(markdown(result))
    return 0


def _engine_openvino(args: argparse.Namespace, batches: tuple[int, ...]) -> int:
    """``bench engine --openvino``: the CPU provider against OpenVINO's, in place of the ceilings."""
    from . import engine_providers

    trials = 5  # --seconds is the budget per batch size and figure, split over the trials
    result = engine_providers.run(args.model, int8=args.int8, batches=batches, threads=args.threads,
                                  trials=trials, seconds_per_trial=max(0.02, args.seconds / trials), data=args.data,
                                  rounds=args.rounds, venv=Path(args.openvino_venv) if args.openvino_venv else None)
    engine_providers.write_outputs(result, args.out)
    print(engine_providers.markdown(result))
    return 0


def _gpu(args: argparse.Namespace, settings: Settings) -> int:
    """``bench gpu``: exit 3 (nothing measured, nothing written) where there is no GPU to check, 1 on a parity failure."""
    import sys

    from .gpu_check import NoGpu, markdown, run, write_outputs

    try:
        result = run(args.model or [], args.data, device_id=settings.processor.device_id if args.device_id is None
                     else args.device_id, batches=tuple(int(b) for b in args.batches.split(",")),
                     trials=args.trials, seconds_per_trial=args.seconds_per_trial, tensorrt=not args.no_tensorrt,
                     size=args.size, efficientad_steps=args.efficientad_steps, work_dir=args.work_dir)
    except NoGpu as exc:
        print(f"lineguard bench gpu: {exc}", file=sys.stderr)
        return 3
    write_outputs(result, args.out)
    print(markdown(result))
    return 0 if result["passed"] else 1


def _tiling(args: argparse.Namespace, settings: Settings) -> int:
    from .tiling import TilingBenchConfig, markdown, run, summary, write_outputs

    tile, _, overlap = args.tile.partition(":")
    result = run(TilingBenchConfig(n_train=args.train, n_test_good=args.test_good, n_test_defect=args.test_defect,
                                   tile=int(tile), overlap=int(overlap or 0), input_size=args.size,
                                   coreset_ratio=args.coreset_ratio, tiles_coreset_ratio=args.tiles_coreset_ratio,
                                   seed=args.seed,
                                   work_dir=Path(args.work_dir) if args.work_dir else None))
    write_outputs(result, args.out)
    print(markdown(result))
    print(json.dumps(summary(result)))
    return 0


def _bank_update(args: argparse.Namespace, settings: Settings) -> int:
    from .bank_update import BankUpdateConfig, markdown, run, write_outputs

    result = run(BankUpdateConfig(data=Path(args.data), slice_by=args.slice, slice_fraction=args.slice_fraction,
                                  add_fraction=args.add_fraction, size=args.size, coreset_ratio=args.coreset_ratio,
                                  seed=args.seed, work_dir=Path(args.work_dir) if args.work_dir else None))
    write_outputs(result, args.out)
    print(markdown(result))
    print(json.dumps(result["summary"]))
    return 0


OUT_HELP = "write the result JSON here (and a .md table beside it)"


def register(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks: engines, the pipeline, lineguard vs anomalib")
    kinds = bench.add_subparsers(dest="bench_kind", required=True, metavar="KIND")
    p = kinds.add_parser("pipeline", help="producers → Kafka → processors → ClickHouse vs raw Kafka and engine alone")
    p.add_argument("--lines", type=int, default=2)
    p.add_argument("--frames", type=int, default=300, help="frames per line in the throughput phase")
    p.add_argument("--size", type=int, default=256, help="frame width and height (JPEG)")
    p.add_argument("--model-dir", help="folder of model folders (default: fit the baseline on synthetic frames)")
    p.add_argument("--product", default="washer", help="product (model folder name) the frames carry")
    p.add_argument("--data", help="images to send as frames (MVTec root or folder; default: synthetic frames)")
    p.add_argument("--defect-share", type=float, default=0.1,
                   help="share of defective frames sent (each costs a heatmap); default 0.1")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=int, default=50)
    p.add_argument("--workers", default="1",
                   help="processor workers in one consumer group; a list (1,2) measures each in turn")
    p.add_argument("--brokers", type=int, default=None,
                   help="Kafka nodes of the stack (started if needed); 3 or more: the throughput phase with "
                        "RF 1 and RF 3 on the same cluster, for each worker count, side by side")
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--poison-share", type=float, default=0.0,
                   help="then the throughput phase again with this share of hostile messages (e.g. 0.2)")
    add_output_file(p, OUT_HELP)
    p.set_defaults(handler=_pipeline)

    e = kinds.add_parser("engine", help="engines against their ceiling at batch 1/8/16/32, FLOPs vs matmul rate")
    e.add_argument("--model", action="append", required=True, help="model folder (repeatable)")
    e.add_argument("--data", help="images to score (MVTec root or folder); default random noise")
    e.add_argument("--batches", default="1,8,16,32")
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    e.add_argument("--seconds", type=float, default=3.0, help="timing budget per batch size")
    e.add_argument("--int8", action="store_true",
                   help="also time each folder's model.int8.onnx (lineguard export --int8) beside its FP32 graph")
    e.add_argument("--openvino", action="store_true",
                   help="instead of the ceilings: ONNX Runtime's CPU provider against OpenVINO's, side by side "
                        "(OpenVINO from its own venv, .cache/venv-openvino, created when missing)")
    e.add_argument("--openvino-venv",
                   help="the OpenVINO venv (default .cache/venv-openvino, or LINEGUARD_OPENVINO_VENV)")
    e.add_argument("--rounds", type=int, default=1, help="with --openvino: passes over every graph and leg")
    add_output_file(e, OUT_HELP)
    e.set_defaults(handler=_engine)

    f = kinds.add_parser("fit", help="PatchCore fit time and peak RSS against the number of training images")
    f.add_argument("--data", required=True, help="MVTec root (train/good) or a folder of normal images")
    f.add_argument("--sizes", help="training-set sizes, e.g. 83,166,333,666 (default: 1/8, 1/4, 1/2, all)")
    f.add_argument("--model", default="patchcore", choices=["patchcore", "efficientad", "baseline"])
    f.add_argument("--option", action="append", help="engine option KEY=VALUE passed to train (repeatable)")
    f.add_argument("--max-rss-mb", type=float, default=8000.0, help="kill any fit whose RSS exceeds this")
    add_output_file(f, OUT_HELP)
    f.set_defaults(handler=_fit)

    a = kinds.add_parser("anomalib", help="lineguard's PatchCore vs anomalib 2.7's: same backbone and data, one run")
    a.add_argument("--data", required=True, help="MVTec-layout folder (train/good, test/, ground_truth/)")
    add_output_file(a, OUT_HELP)
    a.add_argument("--size", type=int, default=256, help="input size in pixels (both sides)")
    a.add_argument("--layers", default="features.6,features.13", help="MobileNetV2 layers (both sides)")
    a.add_argument("--coreset-ratio", type=float, default=0.1, help="both sides (anomalib's default: 0.1)")
    a.add_argument("--match-fit-images", action="store_true",
                   help="fit anomalib on lineguard's fit split (train/good less its 20%% calibration hold-out)")
    a.add_argument("--trials", type=int, default=7, help="timed throughput trials per batch size")
    a.add_argument("--seconds-per-trial", type=float, default=1.5)
    a.add_argument("--no-onnx", action="store_true", help="skip timing anomalib's model exported to ONNX")
    a.add_argument("--max-rss-mb", type=float, default=8000.0, help="kill any step whose RSS exceeds this")
    a.add_argument("--venv", help="anomalib virtualenv (default .cache/anomalib-venv, created when missing)")
    a.add_argument("--work-dir", help="keep models, logs and .npy dumps here (default: a new temp folder)")
    a.set_defaults(handler=_anomalib)

    t = kinds.add_parser("tiling", help="PatchCore on 2448 x 2048 frames with 10-40 px defects: the whole frame "
                                        "resized vs 512 px tiles, image AUROC and frames/s side by side")
    t.add_argument("--train", type=int, default=24, help="normal training frames (a fifth calibrates)")
    t.add_argument("--test-good", type=int, default=20)
    t.add_argument("--test-defect", type=int, default=20)
    t.add_argument("--tile", default="512:64", help="SIZE[:OVERLAP] of the tiled leg, in frame pixels")
    t.add_argument("--size", type=int, default=256, help="the model's input size (both legs)")
    t.add_argument("--coreset-ratio", type=float, default=0.01, help="both legs")
    t.add_argument("--tiles-coreset-ratio", type=float,
                   help="the tiled leg's instead (its memory bank, and search time, grow with the number of tiles)")
    t.add_argument("--seed", type=int, default=0, help="the generated frames are a function of the seed")
    t.add_argument("--work-dir", help="keep the frames and both models here (default: a temp folder)")
    add_output_file(t, OUT_HELP)
    t.set_defaults(handler=_tiling)

    b = kinds.add_parser("bank-update", help="PatchCore learning held-back normal variation by a memory-bank update "
                                             "against a full refit: false alarms, image AUROC, time side by side")
    b.add_argument("--data", required=True, help="MVTec-layout folder (train/good, test/)")
    b.add_argument("--slice", choices=["brightness", "random"], default="brightness",
                   help="which normal images are the new variation: the brightest ones (default) or random ones")
    b.add_argument("--slice-fraction", type=float, default=0.2, help="share of train/good held back (default 0.2)")
    b.add_argument("--add-fraction", type=float, default=0.5,
                   help="share of the slice the update learns; the rest measures the false alarms (default 0.5)")
    b.add_argument("--size", type=int, default=256, help="input size in pixels")
    b.add_argument("--coreset-ratio", type=float, default=0.01)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--work-dir", help="keep the three models here (default: a temp folder)")
    add_output_file(b, OUT_HELP)
    b.set_defaults(handler=_bank_update)

    g = kinds.add_parser("gpu", help="the GPU check: CPU FP32 vs CUDA FP32 vs TensorRT FP16 parity and images/s at "
                                     "batch 1/16/64, in one go (exits 3 with the reason where there is no GPU)")
    g.add_argument("--model", action="append",
                   help="model folder (repeatable; copied, never written to); default: PatchCore and EfficientAD "
                        "fitted here on synthetic images (needs the train extra)")
    g.add_argument("--data", help="images to score (MVTec root or folder; with --model); default: the synthetic set")
    g.add_argument("--device-id", type=int, default=None, help="GPU to use (default: processor.device_id)")
    g.add_argument("--batches", default="1,16,64", help="batch sizes timed on the GPU (the largest is the "
                                                        "TensorRT profile's and the parity batch)")
    g.add_argument("--trials", type=int, default=3)
    g.add_argument("--seconds-per-trial", type=float, default=0.5)
    g.add_argument("--no-tensorrt", action="store_true", help="CUDA only (no TensorRT installed)")
    g.add_argument("--size", type=int, default=256, help="input size of the models fitted here")
    g.add_argument("--efficientad-steps", type=int, default=40, help="training steps of the EfficientAD fitted here")
    g.add_argument("--work-dir", help="keep the model copies, the synthetic data and TensorRT's cache here")
    add_output_file(g, OUT_HELP)
    g.set_defaults(handler=_gpu)
