"""``lineguard models push|list|promote|rollback|shadow|compare``: publishing models once, through the object store
(shadow trials and the model_events audit trail: :mod:`.trials`);
``lineguard models update-bank``: a new PatchCore version that learnt confirmed-good images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lineguard.config import ConfigError, Settings


def _models(settings: Settings):  # noqa: ANN202 - ModelStore, imported here to keep --help fast
    from lineguard.stores import open_object_store

    from .registry import ModelStore

    return ModelStore(open_object_store(settings))


def run_models(args: argparse.Namespace, settings: Settings) -> int:
    from lineguard.engines.manifest import FileMismatch

    from .registry import PublishError

    from . import trials

    if args.models_command == "update-bank":  # works on folders: no object store involved
        return _update_bank(args)
    if args.models_command == "compare":  # reads ClickHouse only
        return trials.run_compare(args, settings)
    models = _models(settings)
    try:
        if args.models_command == "push":
            product, version = models.push(args.model_dir, product=args.product)
            print(f"pushed {product} {version}")
        elif args.models_command == "promote":
            def promote() -> tuple[str | None, str | None]:
                before = trials.live_version(models, args.product, args.line)
                models.promote(args.product, args.version, line=args.line)
                return before, args.version

            if not models.versions(args.product).get(args.version):  # refused before the store is opened
                raise PublishError(f"{args.product} has no complete version {args.version!r}: push it first")
            trials.recorded(settings, args, "promote", args.product, args.line, promote)
            print(f"promoted {args.product} {args.version}" + (f" on {args.line}" if args.line else ""))
        elif args.models_command == "rollback":
            def rollback() -> tuple[str | None, str | None]:
                before = trials.live_version(models, args.product, args.line)
                models.rollback(args.product, line=args.line)
                return before, trials.live_version(models, args.product, args.line)

            trials.recorded(settings, args, "rollback", args.product, args.line, rollback)
            back = trials.live_version(models, args.product, args.line)
            print(f"{args.product}" + (f" on {args.line}" if args.line else "") + " now serves "
                  + (back or "nothing"))
        elif args.models_command == "shadow":
            def shadow() -> tuple[str | None, str | None]:
                return models.shadow(args.product, None if args.clear else args.version, line=args.line), \
                    None if args.clear else args.version

            if not args.clear and not args.version:
                raise PublishError("give --version, or --clear")
            if args.version and not models.versions(args.product).get(args.version):
                raise PublishError(f"{args.product} has no complete version {args.version!r}: push it first")
            trials.recorded(settings, args, "shadow-clear" if args.clear else "shadow", args.product, args.line,
                            shadow)
            where = f" on {args.line}" if args.line else ""
            print(f"{args.product}{where}: shadow cleared" if args.clear else
                  f"{args.product}{where}: {args.version} scored in shadow beside "
                  f"{trials.live_version(models, args.product, args.line) or 'nothing'}")
        else:
            _print_list(models, args.json)
    except (PublishError, FileMismatch, FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"models {args.models_command}: {exc}") from exc
    return 0


def _update_bank(args: argparse.Namespace) -> int:
    from lineguard.engines.data import DatasetError

    try:
        from lineguard.engines.patchcore.update import update_model
    except ModuleNotFoundError as exc:
        raise ConfigError(f"models update-bank needs {exc.name!r}: install the training extra (make train-deps)")
    try:
        path, lineage = update_model(args.model, args.add, args.out, version=args.version, name=args.name,
                                     max_picks=args.max_patches, calibration_dir=args.calibration,
                                     weights_path=args.weights_path)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"models update-bank: {exc}") from exc
    manifest = json.loads(path.read_text())
    score = lineage["added_images_score"]
    print(f"update-bank: out={path.parent} version={manifest['version']} parent={lineage['parent_version']} "
          f"images={lineage['images_added']} patches_added={lineage['patches_added']} "
          f"bank={lineage['bank_size_before']}->{lineage['bank_size_after']} "
          f"added_max_score={score['before_max']:.4f}->{score['after_max']:.4f} "
          f"threshold={lineage['threshold']['parent_value']:.4f}->{lineage['threshold']['value']:.4f} "
          f"({lineage['threshold']['action']})")
    return 0


def _print_list(models, as_json: bool) -> None:  # noqa: ANN001 - ModelStore
    listing = {}
    for product in models.products():
        served = models.served(models.pointer(product))
        listing[product] = {"versions": models.versions(product),
                            "promoted": served.get(""), "lines": {k: v for k, v in served.items() if k}}
    if as_json:
        print(json.dumps(listing, indent=2, sort_keys=True))
        return
    for product, info in listing.items():
        lines = ", ".join(f"{line}={version}" for line, version in sorted(info["lines"].items()))
        print(f"{product}: promoted {info['promoted'] or '-'}" + (f" (lines: {lines})" if lines else ""))
        for version, complete in info["versions"].items():
            print(f"  {version}{'' if complete else '  (incomplete upload)'}")


def register(sub: argparse._SubParsersAction) -> None:
    from lineguard.cli_options import parse_time_ns

    from . import trials

    def parse_line_id(value: str) -> str:
        from lineguard.schemas import topics

        try:
            return topics.check_line_id(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    p = sub.add_parser("models", help="publish models through the object store: push, list, promote, rollback, "
                                      "shadow, compare; "
                                      "update-bank: learn confirmed-good images",
                       description="Models are stored under models/<product>/<version>/ in sinks.object_store; "
                                   "hosts with processor.model_source: object_store serve the promoted version.")
    verbs = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    push = verbs.add_parser("push", help="upload a model folder (its files, checksums, then the manifest)")
    push.add_argument("model_dir", type=Path, help="a folder holding manifest.json and model.onnx")
    push.add_argument("--product", help="product to publish it for (default: the manifest's name)")
    listing = verbs.add_parser("list", help="products, their versions and what is promoted")
    listing.add_argument("--json", action="store_true", help="print JSON")
    promote = verbs.add_parser("promote", help="serve VERSION of PRODUCT (on every line, or on --line)")
    promote.add_argument("product")
    promote.add_argument("version")
    promote.add_argument("--line", help="promote for this line only")
    trials.add_audit_options(promote)
    rollback = verbs.add_parser("rollback", help="serve the previously promoted version again")
    rollback.add_argument("product")
    rollback.add_argument("--line", help="roll back this line's promotion only")
    trials.add_audit_options(rollback)
    shadow = verbs.add_parser(
        "shadow", help="score a candidate VERSION beside the promoted one: its verdicts go to lineguard.shadow.<line> "
                       "and the shadow_verdicts table, never to the verdict topic",
        description="Recorded next to the promotion pointer; processors with processor.model_source: object_store "
                    "pick it up without a restart. Promoting the candidate makes it live and ends the trial.")
    shadow.add_argument("--product", required=True)
    shadow.add_argument("--version", help="the candidate (a pushed version)")
    shadow.add_argument("--line", help="trial on this line only (default: every line)")
    shadow.add_argument("--clear", action="store_true", help="end the trial")
    trials.add_audit_options(shadow)
    compare = verbs.add_parser("compare", help="a line's shadow candidate against its live model, from ClickHouse: "
                                               "agreement, score quantiles, precision and recall on labelled frames")
    compare.add_argument("--line", required=True, type=parse_line_id)
    compare.add_argument("--since", type=parse_time_ns, help="capture time from: ISO time or a span ago (12h, 7d)")
    compare.add_argument("--json", action="store_true", help="print JSON")
    update = verbs.add_parser(
        "update-bank", help="learn confirmed-good images (false alarms) into a PatchCore model without a refit: "
                            "writes a new version folder",
        description="Appends the new images' uncovered patch features to the memory bank (the greedy coreset "
                    "continued), re-exports the graph into --out with the lineage in its manifest, and "
                    "recalibrates the threshold on the parent's held-out normal images where they are found.")
    update.add_argument("--model", required=True, type=Path, help="the parent model folder (left unchanged)")
    update.add_argument("--add", required=True, type=Path, help="folder of confirmed-good images to learn")
    update.add_argument("--out", required=True, type=Path, help="the new model folder to write")
    update.add_argument("--version", help="the new version (default: a UTC timestamp, as train)")
    update.add_argument("--name", help="model name (default: the parent's)")
    update.add_argument("--max-patches", type=int,
                        help="most patches to add (default: the model's coreset ratio of the new patches)")
    update.add_argument("--calibration", type=Path,
                        help="normal images to recalibrate on (default: the parent's held-out ones, if found)")
    update.add_argument("--weights-path", help="backbone weights, where they are not installed as a package")
    p.set_defaults(handler=run_models)
