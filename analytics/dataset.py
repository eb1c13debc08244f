"""``lineguard dataset export``: archived frames of a line as an MVTec-layout folder, for training and evaluation.

Frames come from the frame archive (``processor.archive``: objects under
``<line>/archive/<yyyy>/<mm>/<dd>/<frame_id>.<ext>`` written by the heatmap sink); which frames and
their class come from ClickHouse: each frame's latest verdict (``verdicts_latest``) and, where an
operator judged it, its latest label (``labels_latest``). The ground truth wins over the verdict::

    <out>/<product>/train/good/<frame_id>.<ext>         passed frames, and defective verdicts labelled false_alarm
    <out>/<product>/test/<class>/<frame_id>.<ext>       the rest: class = the label (confirmed_defect, missed_defect),
                                                        or "defective" for a defective verdict no one labelled

A frame the archive does not hold (archive off or sampled out, or expired) is counted, not exported.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lineguard.config import Settings
from lineguard.schemas import topics
from lineguard.stores import ObjectStore, VerdictStore

ARCHIVE_EXTENSIONS = ("jpg", "png")  # what processors/archive.py writes
GOOD_LABELS = ("false_alarm",)  # an operator's word that a defective verdict showed a good part


@dataclass(frozen=True)
class ExportedFrame:
    frame_id: str
    product: str
    captured_at_ns: int
    is_defective: bool
    label: str  # "" where no operator labelled the frame

    @property
    def folder(self) -> str:
        """Where the frame goes in the MVTec layout (relative to its product's folder)."""
        if self.label in GOOD_LABELS or (not self.label and not self.is_defective):
            return "train/good"
        return f"test/{self.label or 'defective'}"


def has_labels(store: VerdictStore) -> bool:
    rows = store.query(f"EXISTS TABLE {store.database}.labels_latest")
    return bool(rows) and bool(next(iter(rows[0].values())))


def select_frames(store: VerdictStore, line: str, since_ns: int, until_ns: int, with_labels: bool) -> list[ExportedFrame]:
    """The line's frames captured in [since_ns, until_ns): latest verdict, and latest label when there is a table."""
    db = store.database
    label = "l.label" if with_labels else "''"
    join = (f"LEFT JOIN {db}.labels_latest AS l ON l.frame_id = v.frame_id AND l.line_id = v.line_id"
            if with_labels else "")
    rows = store.query(
        f"SELECT toString(v.frame_id) AS frame_id, v.product AS product, v.captured_at_ns AS captured_at_ns, "
        f"v.is_defective AS is_defective, {label} AS label FROM {db}.verdicts_latest AS v {join} "
        "WHERE v.line_id = {line:String} AND v.captured_at_ns >= {since:Int64} AND v.captured_at_ns < {until:Int64} "
        "ORDER BY v.captured_at_ns",
        {"line": line, "since": since_ns, "until": until_ns})
    return [ExportedFrame(str(r["frame_id"]).replace("-", ""), r["product"], int(r["captured_at_ns"]),
                          bool(r["is_defective"]), r["label"] or "") for r in rows]


def _wanted(frame: ExportedFrame, labels: set[str] | None, outcome: str) -> bool:
    if labels is not None and frame.label not in labels:
        return False
    return outcome == "all" or (outcome == "defective") == frame.is_defective


def fetch_archived(objects: ObjectStore, line: str, frame: ExportedFrame) -> tuple[str, bytes] | None:
    """(extension, bytes) of the frame's archived image, or None when the archive does not hold it."""
    for ext in ARCHIVE_EXTENSIONS:
        data = objects.get(topics.archive_key(line, frame.frame_id, frame.captured_at_ns, ext))
        if data is not None:
            return ext, data
    return None


def export_dataset(store: VerdictStore, objects: ObjectStore, line: str, out: Path, *, since_ns: int = 0,
                   until_ns: int | None = None, labels: set[str] | None = None, outcome: str = "all") -> Counter[str]:
    """Write the selected archived frames under ``out``; the counts for the summary line."""
    counts: Counter[str] = Counter()
    until_ns = until_ns if until_ns is not None else time.time_ns()
    for frame in select_frames(store, line, since_ns, until_ns, with_labels=has_labels(store)):
        if not _wanted(frame, labels, outcome):
            continue
        counts["selected"] += 1
        archived = fetch_archived(objects, line, frame)
        if archived is None:
            counts["not_archived"] += 1
            continue
        ext, data = archived
        target = out / frame.product / frame.folder / f"{frame.frame_id}.{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        counts["exported"] += 1
        counts[frame.folder] += 1
    return counts


def _export(args: argparse.Namespace, settings: Settings) -> int:
    from lineguard.stores import open_object_store, open_store

    labels = set(args.label.split(",")) if args.label else None
    store, objects = open_store(settings), open_object_store(settings)
    try:
        if labels is not None and not has_labels(store):
            print("lineguard dataset export: --label needs the labels table (lineguard.labels_latest), "
                  "which this ClickHouse does not have yet; use --outcome good|defective")
            return 2
        counts = export_dataset(store, objects, args.line, Path(args.out), since_ns=args.since or 0,
                                until_ns=args.until, labels=labels, outcome=args.outcome)
    finally:
        store.close()
        objects.close()
    folders = " ".join(f"{k}={v}" for k, v in sorted(counts.items()) if "/" in k)
    print(f"dataset: line={args.line} selected={counts['selected']} exported={counts['exported']} "
          f"not_archived={counts['not_archived']} {folders}".rstrip(), flush=True)
    return 0


def register_dataset(sub: argparse._SubParsersAction) -> None:
    from lineguard.cli_options import parse_time_ns

    p = sub.add_parser("dataset", help="datasets from the frame archive: dataset export (docs/replay.md)")
    commands = p.add_subparsers(dest="dataset_command", required=True, metavar="COMMAND")
    e = commands.add_parser("export", help="archived frames of a line as an MVTec-layout folder",
                            description="Copy a line's archived frames (processor.archive) into DIR/<product>/"
                                        "train/good and DIR/<product>/test/<class>, classed by the operator's label "
                                        "where there is one, else by the latest verdict. Prints 'dataset: line=... "
                                        "selected=N exported=E not_archived=M ...'.")
    e.add_argument("--line", required=True)
    e.add_argument("--out", required=True, metavar="DIR", help="the dataset folder (created; existing files overwritten)")
    e.add_argument("--since", type=parse_time_ns, help="capture time from (ISO, or 30m / 12h / 7d ago; default: all)")
    e.add_argument("--until", type=parse_time_ns, help="capture time before (default: now)")
    e.add_argument("--label", help="only frames an operator labelled so (comma-separated: confirmed_defect, "
                                   "false_alarm, missed_defect)")
    e.add_argument("--outcome", choices=("all", "good", "defective"), default="all",
                   help="only frames whose latest verdict passed (good) or flagged them (default: all)")
    e.set_defaults(handler=_export)
