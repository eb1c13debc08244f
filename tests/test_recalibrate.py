"""``lineguard recalibrate``: the threshold rules on known scores, then against a real ClickHouse (chdb and
the server backend) with verdicts and labels, the figures checked against Python, and the CLI writing the
override a processor reads."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from lineguard.analytics.recalibrate import Evidence, effect_on_past, load_evidence, propose, write_override
from lineguard.config import load_settings
from lineguard.schemas import Label
from lineguard.stores import VerdictStore

from sink_fixtures import chdb_http_url, make_verdicts, verdict_store  # noqa: F401


def _evidence(good, defective, now=1.0) -> Evidence:
    return Evidence(np.asarray(good, float), np.asarray(defective, float), now, labelled_good=0, verdicts=0)


def test_the_false_alarm_target_allows_exactly_its_share_of_good_frames_above():
    good = np.arange(1, 201) / 100.0  # 200 good scores 0.01 .. 2.00
    proposal = propose(_evidence(good, [1.5, 2.5, 3.0], now=1.0), "false-alarm-rate", 0.01)
    assert np.sum(good > proposal.threshold) == 2  # floor(0.01 * 200)
    assert proposal.false_alarm_rate == pytest.approx(0.01) and proposal.false_alarm_rate_now == pytest.approx(0.5)
    assert proposal.recall == pytest.approx(2 / 3) and proposal.recall_now == 1.0
    strict = propose(_evidence(good, [], now=1.0), "false-alarm-rate", 0.0)
    assert strict.threshold == 2.0 and strict.false_alarm_rate == 0.0 and strict.recall is None


def test_f1_picks_the_best_separating_threshold_and_needs_defects():
    good, defective = [0.1, 0.2, 0.3, 0.9], [0.8, 1.0, 1.2]
    proposal = propose(_evidence(good, defective), "f1")
    # t = 0.3: tp 3, fp 1 (0.9), fn 0 -> F1 6/7, better than t = 0.9 (tp 2, fn 1 -> 4/5)
    assert proposal.threshold == 0.3 and proposal.recall == 1.0 and proposal.false_alarm_rate == 0.25
    with pytest.raises(ValueError, match="labelled defects"):
        propose(_evidence(good, [1.0]), "f1")
    with pytest.raises(ValueError, match="no good frames"):
        propose(_evidence([], defective))


def test_against_the_store_the_figures_match_python(verdict_store: VerdictStore, tmp_path):  # noqa: F811
    verdicts = [v for v in make_verdicts(120, lines=["press1"], products=["washer"])]
    verdict_store.insert_verdicts(verdicts)
    defective = [v for v in verdicts if v.is_defective]
    passed = [v for v in verdicts if not v.is_defective]
    now = time.time_ns()

    def label(v, kind, at=now):
        return Label(frame_id=v.frame_id, line_id=v.line_id, camera_id=v.camera_id, product=v.product,
                     model_version=v.model_version, label=kind, labelled_at_ns=at, operator="op")

    false_alarms, confirmed, missed = defective[:4], defective[4:8], passed[:2]
    labels = ([label(v, "false_alarm") for v in false_alarms] + [label(v, "confirmed_defect") for v in confirmed]
              + [label(v, "missed_defect") for v in missed]
              # an operator changing their mind: the latest label counts
              + [label(confirmed[0], "false_alarm", at=now - 10**9)])
    verdict_store.insert_labels(labels)

    evidence = load_evidence(verdict_store, "press1", "washer", 0)
    expected_good = sorted([v.score for v in false_alarms] + [v.score for v in passed[2:]])
    expected_defective = sorted([v.score for v in confirmed] + [v.score for v in missed])
    assert sorted(evidence.good) == pytest.approx(expected_good)
    assert sorted(evidence.defective) == pytest.approx(expected_defective)
    assert evidence.labelled_good == 4 and evidence.verdicts == 120

    proposal = propose(evidence, "false-alarm-rate", 0.05)
    t = proposal.threshold
    effect = effect_on_past(verdict_store, "press1", "washer", 0, t)
    assert effect == {
        "defective_to_pass": sum(v.score <= t for v in defective),
        "pass_to_defective": sum(v.score > t for v in passed),
        "false_alarms_removed": sum(v.score <= t for v in false_alarms),
        "known_defects_passed": sum(v.score <= t for v in confirmed + missed),
        "missed_defects_caught": sum(v.score > t for v in missed),
    }

    config = tmp_path / "lineguard.yaml"
    config.write_text("log_level: INFO\n")
    write_override(config, "press1", "washer", t)
    settings = load_settings(config)
    assert settings.processor.threshold_overrides == {"press1": {"washer": round(t, 6)}}
    assert settings.log_level == "INFO"  # the rest of the file is kept
