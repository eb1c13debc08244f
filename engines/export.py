"""``lineguard export``: derive the INT8 and FP16 graphs from a trained model folder and say how far they
stray from FP32 (on the calibration images, and on the test set where ``--data`` is an MVTec root)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .derived import calibration_source, compare_on_test_set, describe, record
from .manifest import Manifest


def run_export_cli(args: argparse.Namespace, settings: Any) -> int:
    if not (args.int8 or args.fp16):
        print("export: nothing to do (model.onnx is written by `lineguard train`); pass --int8 and/or --fp16")
        return 2
    model_dir = Path(args.model)
    done: list[tuple[str, dict[str, Any]]] = []
    if args.int8:
        from .quantize import quantize_model

        info = quantize_model(model_dir, args.data, n_images=args.calibration_images,
                              method=args.calibration_method, per_channel=not args.per_tensor,
                              reduce_range=not args.full_range)
        print(f"export: wrote {model_dir / info['file']} ({info['quantised_nodes']} nodes INT8, calibrated on "
              f"{info['calibration_images']} images; mean score shift {100 * info['score_relative_diff_mean']:+.2f}%)")
        done.append(("int8", info))
    if args.fp16:
        from .fp16 import export_fp16

        info = export_fp16(model_dir, args.data, n_images=args.calibration_images, keep_fp32=args.fp16_keep_fp32)
        print(f"export: wrote {model_dir / info['file']} ({info['fp32_nodes']} of {info['nodes']} nodes kept "
              f"float32, calibrated on {info['calibration_images']} images)")
        done.append(("fp16", info))
    data = calibration_source(Manifest.load(model_dir), args.data)
    for precision, info in done:
        # Each derived graph with its own threshold against FP32 with its own, image by image: the verdicts
        # a line would see change, counted (only where the data has a labelled test/ folder).
        parity = None if args.skip_test_parity else compare_on_test_set(model_dir, info["file"], data)
        if parity is not None:
            info["test_parity"] = parity
            record(model_dir, precision, info)
        print(describe(precision, info))
    return 0
