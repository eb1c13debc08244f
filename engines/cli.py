"""``lineguard train``, ``lineguard eval`` and ``lineguard export``: the engines' command line (a contract
scripts depend on)."""

from __future__ import annotations

import argparse
import json

from lineguard.cli_options import add_output_file

from .common.backbone_registry import BACKBONES  # torch-free: --help lists the backbones without torch


def _train(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from .training import train

    options = {}
    if args.size:
        options["input_size"] = (args.size, args.size)
    if args.backbone:
        options["backbone"] = args.backbone
    if args.backbone_weights:
        options["weights_path"] = args.backbone_weights
    for item in args.option or []:
        key, _, value = item.partition("=")
        try:  # JSON where it parses (numbers, true/false, lists), else the plain string: layers=features.6
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    regions = _regions(args, settings)
    path = train(args.model, args.data, args.out, name=args.name, version=args.version,
                 target_false_reject_rate=args.false_reject_rate, defects_dir=args.defects,
                 seed=args.seed, regions=regions, calibration_folds=args.calibration_folds,
                 confidence=args.confidence, **options)
    print(f"train: model={args.model} out={path.parent} regions={regions.describe()}")
    return 0


def _regions(args: argparse.Namespace, settings):  # noqa: ANN001, ANN202 - Settings, Regions
    """The regions to train on: a camera of ``plant.lines`` (``--camera LINE/CAMERA``) or ``--roi/--tile/--ignore-mask``."""
    from lineguard.config import ConfigError

    from .regions import RegionError, Regions, load_ignore_mask

    try:
        if args.camera:
            if args.roi or args.tile or args.ignore_mask:
                raise ValueError("--camera takes the regions from the configuration: give it alone")
            line_id, _, camera_id = args.camera.partition("/")
            camera = settings.plant.camera(line_id, camera_id) if camera_id else None
            if camera is None:
                raise ConfigError(f"--camera {args.camera}: no plant.lines.{line_id}.cameras.{camera_id or '?'} "
                                  "in the configuration (give it as LINE/CAMERA)")
            return Regions.from_camera(camera)
        tile_size, tile_overlap = None, 0
        if args.tile:
            size, _, overlap = args.tile.partition(":")
            tile_size, tile_overlap = int(size), int(overlap or 0)
        roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
        if roi is not None and len(roi) != 4:
            raise ValueError("--roi takes x,y,width,height")
        return Regions(roi=roi, tile_size=tile_size, tile_overlap=tile_overlap,
                       ignored=load_ignore_mask(args.ignore_mask) if args.ignore_mask else None)
    except (RegionError, ValueError) as exc:
        raise ConfigError(f"train: {exc}") from None


def _eval(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from .evaluate import run_eval_cli

    return run_eval_cli(args, settings)


def _calibrate(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from .calibrate import run_calibrate_cli

    return run_calibrate_cli(args, settings)


def _export(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    from .export import run_export_cli

    return run_export_cli(args, settings)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fit an engine on normal images and export it to ONNX + manifest")
    p.add_argument("--model", required=True, choices=["baseline", "patchcore", "efficientad", "simplenet", "draem"])
    p.add_argument("--data", required=True, help="MVTec root (uses train/good) or a folder of normal images")
    p.add_argument("--out", required=True, help="model folder to write (model.onnx + manifest.json)")
    p.add_argument("--backbone", choices=sorted(BACKBONES), metavar="NAME",
                   help="feature extractor for patchcore/efficientad, one of: " + ", ".join(sorted(BACKBONES))
                   + " (weights and layers: docs/engines.md#backbones)")
    p.add_argument("--backbone-weights", metavar="PATH",
                   help="the backbone's weight file (a torchvision state dict saved with torch.save for the "
                        "ResNets); default: the installed package's")
    p.add_argument("--size", type=int, help="square input size in pixels")
    p.add_argument("--name")
    p.add_argument("--version")
    p.add_argument("--false-reject-rate", type=float, default=0.01,
                   help="share of good parts the threshold may reject (default 0.01)")
    p.add_argument("--confidence", type=float, default=0.9,
                   help="probability that the realised false-reject rate stays at or below the target: the "
                        "threshold is that upper confidence bound of the quantile (default 0.9)")
    p.add_argument("--calibration-folds", type=int, default=None,
                   help="score every normal image out of fold with K models to calibrate on all of them (0: hold "
                        "out a fifth; default: 5 folds for patchcore/baseline where a fifth is too few for the bound)")
    p.add_argument("--defects", help="folder of labelled defective images: also calibrate an F1-optimal threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", help="engine option KEY=VALUE (repeatable)")
    regions = p.add_argument_group("regions", "train on part of each image, or on its tiles, as a camera of "
                                               "plant.lines is scored (recorded in the manifest)")
    regions.add_argument("--roi", metavar="X,Y,W,H", help="region of interest in image pixels")
    regions.add_argument("--tile", metavar="SIZE[:OVERLAP]",
                         help="cut the region into SIZE px square tiles overlapping by OVERLAP px (e.g. 512:64)")
    regions.add_argument("--ignore-mask", metavar="PATH", help="image of the ROI's or the frame's size: "
                                                               "non-zero pixels are not inspected")
    regions.add_argument("--camera", metavar="LINE/CAMERA",
                         help="take --roi, --tile and --ignore-mask from plant.lines.LINE.cameras.CAMERA")
    p.set_defaults(handler=_train)

    e = sub.add_parser("eval", help="evaluate a model folder on an MVTec-layout test set")
    e.add_argument("--model", required=True, help="model folder")
    e.add_argument("--data", required=True, help="MVTec root (uses test/ and ground_truth/)")
    add_output_file(e, "write the metrics JSON here")
    e.add_argument("--markdown", help="write a Markdown table here")
    e.add_argument("--sheet", help="write a PNG sheet of heatmap overlays here")
    e.add_argument("--scores", metavar="CSV", help="write every test image's score here (path,defect,score)")
    e.add_argument("--batch", type=int, default=16)
    e.add_argument("--onnx-file", default="model.onnx",
                   help="graph in the model folder to run, e.g. model.int8.onnx or model.fp16.onnx "
                        "(see `lineguard export`); its threshold is the one calibrated for it")
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    e.set_defaults(handler=_eval)

    c = sub.add_parser("calibrate", help="set a model's threshold from a line's own normal images (the line's "
                                         "override, or the manifest's)")
    c.add_argument("--model", required=True, help="model folder")
    c.add_argument("--images", required=True, help="folder of normal images, imaged as the line images them")
    c.add_argument("--false-reject-rate", type=float, default=None,
                   help="target share of good parts rejected (default: the manifest's)")
    c.add_argument("--confidence", type=float, default=0.9,
                   help="probability the realised false-reject rate stays at or below the target (default 0.9)")
    c.add_argument("--line", help="the line the images come from (with --write)")
    c.add_argument("--product", help="product of the override (default: the model folder's name)")
    c.add_argument("--write", metavar="YAML", help="set processor.threshold_overrides.LINE.PRODUCT in this YAML file")
    c.add_argument("--update-manifest", action="store_true", help="put the threshold in force in the model's manifest")
    c.add_argument("--force", action="store_true", help="write even with fewer images than the bound needs")
    c.add_argument("--onnx-file", default="model.onnx")
    c.add_argument("--batch", type=int, default=16)
    c.set_defaults(handler=_calibrate)

    x = sub.add_parser("export", help="derive other graphs from a trained model folder (INT8, FP16), each with "
                                      "its own threshold, and print how far their scores and verdicts stray")
    x.add_argument("--model", required=True, help="model folder (model.onnx + manifest.json)")
    x.add_argument("--int8", action="store_true",
                   help="write model.int8.onnx: static INT8 quantisation calibrated on normal images")
    x.add_argument("--fp16", action="store_true",
                   help="write model.fp16.onnx: FP16 weights and activations (for GPUs; processor.precision: fp16)")
    x.add_argument("--fp16-keep-fp32", choices=["head", "none"], default="head",
                   help="nodes left float32 in the FP16 graph: head (all but the backbone; default) or none")
    x.add_argument("--data", help="normal images to calibrate on (MVTec root or folder; default: the training data); "
                                  "an MVTec root's test/ set also gets the derived graphs' verdicts compared to FP32's")
    x.add_argument("--skip-test-parity", action="store_true", help="do not score the test set to compare verdicts")
    x.add_argument("--calibration-images", type=int, default=32)
    x.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default="minmax")
    x.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    x.add_argument("--full-range", action="store_true",
                   help="8-bit weights instead of 7-bit; only for CPUs with VNNI (or GPUs): on AVX2 without VNNI "
                        "uint8 x int8 products saturate and the INT8 model breaks")
    x.set_defaults(handler=_export)
