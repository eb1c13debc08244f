"""``lineguard recalibrate``: a line's threshold proposed from what operators said about its verdicts.

Ground truth per frame (its latest label, ``labels_latest``, joined to its latest verdict):
``confirmed_defect`` and ``missed_defect`` are defective parts, ``false_alarm`` a good one. Passed
frames nobody labelled count as good: operators review a sample of passed parts, so a missed defect
among the unlabelled is possible and makes the false-alarm estimate a little high, never low.
Unlabelled *defective* verdicts are left out (nobody said what they were).

Objectives, over those frames' scores:

* ``false-alarm-rate`` (default, ``--target 0.01``): the lowest threshold whose false-alarm rate on the
  good frames is at most the target; the recall it keeps on the known defects is reported.
* ``f1``: the threshold with the best F1 on the labelled frames.

The proposal is shown against the line's past verdicts (how many would change, which known false alarms
it removes, which known defects it would pass) and written, on request, as a per-line threshold override
(``processor.threshold_overrides``) into a YAML configuration file. Processors read the override at start.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lineguard.config import ConfigError, Settings
from lineguard.stores import VerdictStore

DEFECT_LABELS = ("confirmed_defect", "missed_defect")
GOOD_LABELS = ("false_alarm",)
MIN_LABELLED_DEFECTS = 3  # fewer: an F1 or a recall figure is noise, say so and propose nothing for F1


@dataclass(frozen=True)
class Evidence:
    """Scores of one line and product: the good frames (labelled or passed unlabelled) and the defective ones."""

    good: np.ndarray
    defective: np.ndarray
    threshold_now: float
    labelled_good: int
    verdicts: int


@dataclass(frozen=True)
class Proposal:
    threshold: float
    objective: str
    false_alarm_rate: float  # on the good frames, at the proposed threshold
    recall: float | None  # on the known defects; None without any
    false_alarm_rate_now: float
    recall_now: float | None


def _rates(evidence: Evidence, threshold: float) -> tuple[float, float | None]:
    fa = float(np.mean(evidence.good > threshold)) if evidence.good.size else 0.0
    recall = float(np.mean(evidence.defective > threshold)) if evidence.defective.size else None
    return fa, recall


def propose(evidence: Evidence, objective: str = "false-alarm-rate", target: float = 0.01) -> Proposal:
    """The threshold meeting ``objective`` (``is_defective`` is ``score > threshold``, as in the processors)."""
    if evidence.good.size == 0:
        raise ValueError("no good frames (passed or labelled false_alarm): nothing to calibrate against")
    if objective == "false-alarm-rate":
        if not 0.0 <= target < 1.0:
            raise ValueError(f"--target must be a rate in [0, 1), got {target}")
        good = np.sort(evidence.good)
        # at most floor(target * n) good frames may score above the threshold: put it at the next score down
        allowed = int(np.floor(target * good.size))
        threshold = float(good[good.size - 1 - allowed])
    elif objective == "f1":
        if evidence.defective.size < MIN_LABELLED_DEFECTS:
            raise ValueError(f"F1 needs at least {MIN_LABELLED_DEFECTS} labelled defects, this line has "
                             f"{evidence.defective.size}: use --objective false-alarm-rate")
        candidates = np.unique(np.concatenate([evidence.good, evidence.defective]))
        best, threshold = -1.0, float(candidates[-1])
        for t in candidates:  # every distinct score, below which the decision changes
            tp = float(np.sum(evidence.defective > t))
            fp = float(np.sum(evidence.good > t))
            fn = float(evidence.defective.size - tp)
            f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
            if f1 > best:
                best, threshold = f1, float(t)
    else:
        raise ValueError(f"unknown objective {objective!r}: false-alarm-rate or f1")
    fa, recall = _rates(evidence, threshold)
    fa_now, recall_now = _rates(evidence, evidence.threshold_now)
    return Proposal(threshold, objective, fa, recall, fa_now, recall_now)


def load_evidence(store: VerdictStore, line: str, product: str, since_ns: int) -> Evidence:
    db = store.database
    rows = store.query(
        f"SELECT v.score AS score, v.threshold AS threshold, v.is_defective AS is_defective, "
        f"ifNull(l.label, '') AS label FROM {db}.verdicts_latest AS v "
        f"LEFT JOIN {db}.labels_latest AS l ON l.frame_id = v.frame_id AND l.line_id = v.line_id "
        "WHERE v.line_id = {line:String} AND v.product = {product:String} AND v.captured_at_ns >= {since:Int64} "
        "ORDER BY v.captured_at_ns",
        {"line": line, "product": product, "since": since_ns})
    if not rows:
        raise ValueError(f"no verdicts of {product!r} on line {line!r} in the window")
    good = [r["score"] for r in rows if r["label"] in GOOD_LABELS or (not r["label"] and not r["is_defective"])]
    defective = [r["score"] for r in rows if r["label"] in DEFECT_LABELS]
    return Evidence(np.asarray(good, float), np.asarray(defective, float), float(rows[-1]["threshold"]),
                    labelled_good=sum(r["label"] in GOOD_LABELS for r in rows), verdicts=len(rows))


def effect_on_past(store: VerdictStore, line: str, product: str, since_ns: int, threshold: float) -> dict[str, int]:
    """What the proposal would have changed on the window's verdicts (each frame's latest)."""
    db = store.database
    rows = store.query(
        "SELECT countIf(is_defective AND score <= {t:Float64}) AS defective_to_pass, "
        "countIf(NOT is_defective AND score > {t:Float64}) AS pass_to_defective, "
        "countIf(label = 'false_alarm' AND score <= {t:Float64}) AS false_alarms_removed, "
        "countIf(label IN ('confirmed_defect', 'missed_defect') AND score <= {t:Float64}) AS known_defects_passed, "
        "countIf(label = 'missed_defect' AND score > {t:Float64}) AS missed_defects_caught "
        f"FROM (SELECT v.score AS score, v.is_defective AS is_defective, ifNull(l.label, '') AS label "
        f"FROM {db}.verdicts_latest AS v LEFT JOIN {db}.labels_latest AS l "
        "ON l.frame_id = v.frame_id AND l.line_id = v.line_id "
        "WHERE v.line_id = {line:String} AND v.product = {product:String} AND v.captured_at_ns >= {since:Int64})",
        {"t": threshold, "line": line, "product": product, "since": since_ns})
    return {k: int(v) for k, v in rows[0].items()}


def write_override(path: Path, line: str, product: str, threshold: float) -> None:
    """Set ``processor.threshold_overrides.<line>.<product>`` in the YAML file (created if missing)."""
    import yaml

    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at top level")
    overrides = data.setdefault("processor", {}).setdefault("threshold_overrides", {})
    overrides.setdefault(line, {})[product] = round(threshold, 6)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _recalibrate(args: argparse.Namespace, settings: Settings) -> int:
    from lineguard.stores import open_store

    store = open_store(settings)
    try:
        evidence = load_evidence(store, args.line, args.product, args.since or 0)
        proposal = propose(evidence, args.objective, args.target)
        effect = effect_on_past(store, args.line, args.product, args.since or 0, proposal.threshold)
    except ValueError as exc:
        print(f"lineguard recalibrate: {exc}")
        return 2
    finally:
        store.close()
    print(f"recalibrate: line={args.line} product={args.product} objective={proposal.objective}"
          f"{f' target={args.target}' if proposal.objective == 'false-alarm-rate' else ''} "
          f"verdicts={evidence.verdicts} good={evidence.good.size} (labelled false_alarm {evidence.labelled_good}) "
          f"labelled_defects={evidence.defective.size}")
    print(f"  threshold  now {evidence.threshold_now:.6g} -> proposed {proposal.threshold:.6g}")
    print(f"  false-alarm rate on good frames  now {_percent(proposal.false_alarm_rate_now)} -> "
          f"{_percent(proposal.false_alarm_rate)}")
    print(f"  recall on labelled defects       now {_percent(proposal.recall_now)} -> {_percent(proposal.recall)}")
    print("  on past verdicts: " + " ".join(f"{k}={v}" for k, v in effect.items()))
    if args.write:
        write_override(args.write, args.line, args.product, proposal.threshold)
        print(f"  written: processor.threshold_overrides.{args.line}.{args.product} in {args.write} "
              "(processors read it at start)")
    return 0


def register_recalibrate(sub: argparse._SubParsersAction) -> None:
    from lineguard.cli_options import parse_time_ns

    p = sub.add_parser("recalibrate", help="propose a line's threshold from operators' labels",
                       description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None)
    p.add_argument("--line", required=True)
    p.add_argument("--product", required=True)
    p.add_argument("--objective", choices=("false-alarm-rate", "f1"), default="false-alarm-rate")
    p.add_argument("--target", type=float, default=0.01, help="the false-alarm rate to stay under (default 0.01)")
    p.add_argument("--since", type=parse_time_ns, help="verdicts captured from (ISO, or 30m / 12h / 7d ago; default: all)")
    p.add_argument("--write", type=Path, metavar="FILE",
                   help="write the proposal as processor.threshold_overrides into this YAML configuration file")
    p.set_defaults(handler=_recalibrate)
