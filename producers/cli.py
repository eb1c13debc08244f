"""``lineguard produce``: publish camera frames to a line, or write a synthetic MVTec-layout dataset."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lineguard.config import Settings

SOURCE_HELP = ("synthetic | folder:PATH (images, or an MVTec category: replays test/) | video:PATH | "
               "rtsp://... (a live camera, reconnecting) | genicam:PRODUCER.cti (the genicam extra)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _build_source(args: argparse.Namespace, settings: Settings):  # noqa: ANN202 - one of the sources
    from .sources import FolderSource, SyntheticSource, VideoSource
    from .synthetic import SyntheticCamera

    if args.source.startswith(("rtsp://", "rtsps://")):
        from .rtsp import RtspSource

        return RtspSource(args.source, settings.producer, line_id=args.line, camera_id=args.camera)
    kind, _, path = args.source.partition(":")
    if kind == "genicam" and path:
        from .genicam import GenICamSource

        return GenICamSource(path, settings.producer, line_id=args.line, camera_id=args.camera)
    if kind == "synthetic" and not path:
        camera = SyntheticCamera(args.product, size=args.size, seed=args.seed, defect_rate=args.defect_rate)
        return SyntheticSource(camera, start=args.first_index)
    if kind == "folder" and path:
        return FolderSource(path, loop=args.loop)
    if kind == "video" and path:
        return VideoSource(path, loop=args.loop)
    raise ValueError(f"--source {args.source!r}: expected {SOURCE_HELP}")


def _write_dataset(args: argparse.Namespace) -> int:
    from .synthetic import SyntheticCamera

    camera = SyntheticCamera(args.product, size=args.size, seed=args.seed)
    counts = camera.write_mvtec(args.write_dataset, args.n_train, args.n_test_good, args.n_test_defect)
    summary = " ".join(f"{folder}={n}" for folder, n in counts.items())
    print(f"produce: wrote {args.product} dataset to {args.write_dataset}: {summary}")
    return 0


def _produce(args: argparse.Namespace, settings: Settings) -> int:
    if args.write_dataset:
        return _write_dataset(args)
    if not args.line:
        print("lineguard produce: --line is required (or --write-dataset DIR)", file=sys.stderr)
        return 2

    from lineguard.kafka import ensure_topics

    from .camera import CameraProducer

    if args.compression:
        settings.producer.compression = args.compression
    try:
        source = _build_source(args, settings)
    except (ValueError, FileNotFoundError) as exc:
        print(f"lineguard produce: {exc}", file=sys.stderr)
        return 2
    ensure_topics(settings.kafka, [args.line])
    from lineguard.metrics import serve_metrics

    serve_metrics(settings.producer.metrics_port, settings.metrics_host, "producer")
    producer = CameraProducer(settings, args.line, camera_id=args.camera, product=args.product,
                              encoding=args.encoding, part_id_meta=args.part_id_meta)
    try:
        producer.run(source, fps=args.fps, count=args.count)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the run; what was sent is still flushed and counted below
    finally:
        stats = producer.close()
        # Live sources add what they received, missed and reconnected (producers/live.py).
        live = f" {source.counters.summary()}" if hasattr(source, "counters") else ""
        print(f"produce: line={args.line} sent={stats.sent} delivered={stats.delivered} "
              f"failed={stats.failed} skipped={stats.skipped}{live}", flush=True)
    return 1 if stats.failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce",
        help="publish camera frames to a line's frame topic (or write a synthetic dataset)",
        description="Publish frames from a synthetic camera, an image folder or a video to "
                    "lineguard.frames.<line>; prints one summary line and exits 1 if any frame failed.",
    )
    p.add_argument("--line", help="line id: frames go to lineguard.frames.<line>")
    p.add_argument("--camera", default="cam0", help="camera id, the message key (default: cam0)")
    p.add_argument("--product", default="washer",
                   help="product name in each frame; also the synthetic part: washer, nut, bolt")
    p.add_argument("--source", default="synthetic", help=SOURCE_HELP + " (default: synthetic)")
    p.add_argument("--fps", type=float, help="target frame rate (default: as fast as possible)")
    p.add_argument("--count", type=_positive_int, help="stop after this many frames (default: source end; "
                   "synthetic and --loop sources are endless)")
    p.add_argument("--loop", action="store_true", help="replay a folder or video forever")
    p.add_argument("--encoding", choices=["jpeg", "png", "raw"], default="jpeg")
    p.add_argument("--part-id-meta", metavar="KEY",
                   help="take each frame's part_id from this meta field (e.g. synthetic_index, or a serial the "
                        "source attaches), so `lineguard parts` can join the cameras that see one part")
    p.add_argument("--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"],
                   help="Kafka compression (default: producer.compression)")
    synthetic = p.add_argument_group("synthetic camera")
    synthetic.add_argument("--defect-rate", type=float, default=0.1, help="fraction of defective parts")
    synthetic.add_argument("--size", type=int, default=256, help="image width and height in pixels")
    synthetic.add_argument("--seed", type=int, default=0, help="same seed, same images")
    synthetic.add_argument("--first-index", type=_positive_int, default=0,
                           help="index of the first frame (a --write-dataset's train images are 0..n-train-1)")
    dataset = p.add_argument_group("synthetic dataset (instead of producing)")
    dataset.add_argument("--write-dataset", type=Path, metavar="DIR",
                         help="write an MVTec-layout folder of the synthetic --product to DIR and exit")
    dataset.add_argument("--n-train", type=_positive_int, default=200, help="train/good images")
    dataset.add_argument("--n-test-good", type=_positive_int, default=50, help="test/good images")
    dataset.add_argument("--n-test-defect", type=_positive_int, default=50,
                         help="defective test images in all, spread evenly over the defect kinds")
    p.set_defaults(handler=_produce)
