"""The operating point a line runs at: the confidence-bound threshold on synthetic score distributions, the
minimum-count rule, out-of-fold calibration, ``lineguard eval``'s operating-point report and
``lineguard calibrate`` (baseline engine on a generated MVTec folder: no torch, no real data)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from engine_images import write_mvtec
from scipy import stats

from lineguard.cli import main
from lineguard.engines.base import calibrate
from lineguard.engines.evaluate import operating_point
from lineguard.engines.manifest import Manifest
from lineguard.engines.thresholds import (min_normal_count, normal_quantile_bound, threshold_at_rate)
from lineguard.engines.training import calibration_folds_for, fold_of


def test_min_normal_count_is_where_the_maximum_first_bounds_the_rate() -> None:
    assert min_normal_count(0.01, 0.9) == 230  # 0.99^230 = 0.0991 <= 0.1 < 0.99^229
    assert min_normal_count(0.05, 0.9) == 45
    assert 0.99 ** 230 <= 0.1 < 0.99 ** 229
    scores = np.arange(229.0)
    short = normal_quantile_bound(scores, 0.01, 0.9)
    assert not short.sufficient and short.rank is None and short.value > scores.max()
    assert short.achieved_confidence == pytest.approx(1 - 0.99 ** 229)
    enough = normal_quantile_bound(np.arange(230.0), 0.01, 0.9)
    assert enough.sufficient and enough.rank == 230 and enough.value == 229.0
    assert enough.achieved_confidence == pytest.approx(1 - 0.99 ** 230)


def test_rank_is_the_smallest_order_statistic_with_the_confidence() -> None:
    n, p, conf = 1000, 0.01, 0.9
    bound = normal_quantile_bound(np.random.default_rng(1).normal(size=n), p, conf)
    k = bound.rank
    # P(rate of X_(k) <= p) = P(Bin(n, 1 - p) <= k - 1)
    assert stats.binom.cdf(k - 1, n, 1 - p) >= conf > stats.binom.cdf(k - 2, n, 1 - p)
    assert bound.achieved_confidence == pytest.approx(stats.binom.cdf(k - 1, n, 1 - p), rel=1e-9)


@pytest.mark.parametrize("dist", [stats.norm(), stats.lognorm(0.6), stats.expon(), stats.gamma(3.0)],
                         ids=["normal", "lognormal", "exponential", "gamma"])
def test_the_realised_false_reject_rate_stays_at_or_below_target_in_most_draws(dist) -> None:
    """Calibrate on n normal scores, measure the rate on the distribution (exactly, and on fresh samples):
    at or below the target in >= ~90% of the draws; the plain empirical quantile only in about half."""
    rng = np.random.default_rng(7)
    target, n, draws = 0.01, 500, 300
    ucb_ok = plain_ok = 0
    fresh_rates = []
    for _ in range(draws):
        scores = dist.rvs(size=n, random_state=rng)
        t = normal_quantile_bound(scores, target, 0.9).value
        ucb_ok += dist.sf(t) <= target
        plain_ok += dist.sf(np.quantile(scores, 1 - target)) <= target
        fresh_rates.append(float((dist.rvs(size=5000, random_state=rng) > t).mean()))
    assert ucb_ok / draws >= 0.85, ucb_ok / draws  # 0.9 expected (discreteness makes it a little more)
    assert plain_ok / draws < 0.75, plain_ok / draws
    assert np.mean(np.array(fresh_rates) <= target) >= 0.8
    assert np.median(fresh_rates) < target


def test_calibrate_warns_below_the_minimum_and_records_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    with caplog.at_level(logging.WARNING, logger="lineguard.engines.base"):
        thresholds, calibration = calibrate(rng.normal(size=100), None, 0.01)
    assert "only 100 normal images" in caplog.text and "230 are needed" in caplog.text
    rule = calibration["quantile_rule"]
    assert rule["sufficient"] is False and rule["min_normal_count"] == 230 and rule["rank"] is None
    assert thresholds.confidence == 0.9 and thresholds.method == "normal_quantile"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lineguard.engines.base"):
        _, calibration = calibrate(rng.normal(size=400), None, 0.01)
    assert not caplog.text and calibration["quantile_rule"]["sufficient"] is True


def test_out_of_fold_calibration_where_a_held_out_fifth_is_too_few() -> None:
    # 666 images: a fifth (133) is below 230, all of them are not -> 5 folds for the engines that refit fast
    assert calibration_folds_for("patchcore", 666, 0.2, 0.01) == 5
    assert calibration_folds_for("baseline", 666, 0.2, 0.01) == 5
    assert calibration_folds_for("efficientad", 666, 0.2, 0.01) == 0  # a training loop per fold: only if asked
    assert calibration_folds_for("patchcore", 100, 0.2, 0.01) == 0  # cannot reach the bound either way
    assert calibration_folds_for("patchcore", 2000, 0.2, 0.01) == 0  # 400 held out suffice
    assert calibration_folds_for("patchcore", 100, 0.2, 0.01, folds=4) == 4
    assert calibration_folds_for("patchcore", 666, 0.2, 0.01, folds=0) == 0
    fold = fold_of(11, 3, seed=0)
    assert sorted(np.bincount(fold).tolist()) == [3, 4, 4]


def test_operating_point_hand_computed() -> None:
    good = np.arange(100) / 100.0  # 0.00 .. 0.99
    bad = np.array([0.5, 0.975, 0.985, 2.0])
    op = operating_point(np.r_[good, bad], np.r_[np.zeros(100), np.ones(4)].astype(bool), 0.955, 0.01)
    assert op["false_rejects"] == 4 and op["false_reject_rate"] == pytest.approx(0.04)
    assert op["false_reject_ratio"] == pytest.approx(4.0) and op["catch_rate"] == pytest.approx(0.75)
    one = op["at_false_reject_rate"]["0.01"]
    assert one["threshold"] == pytest.approx(0.98) and one["false_reject_rate"] == pytest.approx(0.01)
    assert one["catch_rate"] == pytest.approx(0.5)
    five = op["at_false_reject_rate"]["0.05"]
    assert five["threshold"] == pytest.approx(0.94) and five["false_reject_rate"] == pytest.approx(0.05)
    assert five["catch_rate"] == pytest.approx(0.75)
    assert "good test images" in op["oracle_note"]
    assert threshold_at_rate([1.0, 1.0, 1.0], 0.5) == 1.0  # ties: none above


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("op")
    data = write_mvtec(root / "data", n_train=12, n_good=6, n_defect=3, size=96)
    model = root / "washer"
    assert main(["train", "--model", "baseline", "--data", str(data), "--out", str(model), "--size", "96"]) == 0
    return data, model


def test_eval_reports_the_operating_point(trained: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    data, model = trained
    out = tmp_path / "eval.json"
    csv = tmp_path / "scores.csv"
    assert main(["eval", "--model", str(model), "--data", str(data), "--out", str(out), "--batch", "4",
                 "--scores", str(csv)]) == 0
    printed = capsys.readouterr().out
    op = json.loads(out.read_text())["operating_point"]
    manifest = Manifest.load(model)
    assert op["threshold"] == pytest.approx(manifest.thresholds.value)
    assert op["target_false_reject_rate"] == 0.01 and op["confidence"] == 0.9
    assert op["n_good"] == 6 and op["n_defective"] == 6
    for key in ("false_reject_rate", "false_rejects", "false_reject_ratio", "catch_rate", "oracle_note"):
        assert key in op, key
    assert set(op["at_false_reject_rate"]) == {"0.01", "0.05"}
    for point in op["at_false_reject_rate"].values():
        assert 0.0 <= point["catch_rate"] <= 1.0 and point["false_reject_rate"] <= 0.05
    assert "false-reject rate" in printed and "oracle" in printed and "catch rate" in printed
    report = json.loads(out.read_text())
    assert all("catch_rate" in m for m in report["per_defect"].values())
    rows = csv.read_text().splitlines()
    assert rows[0] == "path,defect,score" and len(rows) == 1 + 12
    scores = np.array([float(r.rsplit(",", 1)[1]) for r in rows[1:]])
    good = np.array([r.split(",")[-2] == "good" for r in rows[1:]])
    assert op["false_reject_rate"] == pytest.approx(float((scores[good] > op["threshold"]).mean()), abs=1e-6)


def test_training_records_the_calibration_and_can_go_out_of_fold(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = trained
    manifest = Manifest.load(model)
    assert manifest.training["calibration_folds"] == 0  # 12 images: held-out split, short of the bound
    assert manifest.calibration["quantile_rule"]["sufficient"] is False
    oof = tmp_path / "oof"
    assert main(["train", "--model", "baseline", "--data", str(data), "--out", str(oof), "--size", "96",
                 "--calibration-folds", "3"]) == 0
    m = Manifest.load(oof)
    assert m.training["calibration_folds"] == 3
    assert m.training["n_images"] == m.training["n_calibration"] == 12
    assert m.calibration["n_normal"] == 12


def test_calibrate_writes_a_line_override_only_with_enough_images(trained: tuple[Path, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    data, model = trained
    plant = tmp_path / "plant.yaml"
    images = data / "train" / "good"
    assert main(["calibrate", "--model", str(model), "--images", str(images), "--line", "press2",
                 "--write", str(plant)]) == 2
    assert "too few images: 230 are needed" in capsys.readouterr().out and not plant.exists()
    assert main(["calibrate", "--model", str(model), "--images", str(images), "--line", "press2",
                 "--write", str(plant), "--false-reject-rate", "0.2", "--confidence", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "order statistic" in printed
    value = yaml.safe_load(plant.read_text())["processor"]["threshold_overrides"]["press2"]["washer"]
    assert value > 0
    from lineguard.config import load_settings

    settings = load_settings(config_file=str(plant))
    from lineguard.inspection.thresholds import threshold_for

    assert threshold_for(settings.processor, "press2", "washer", 0.0) == pytest.approx(value)


def test_labelled_defects_set_the_f1_optimal_threshold_over_the_normal_bound():
    """`lineguard train --defects DIR`: with labelled defect scores the threshold separates them best (the
    normal bound is still recorded); without, it is the normal bound."""
    from lineguard.engines.base import calibrate

    normals = np.linspace(1.0, 2.0, 40)
    defects = np.linspace(2.5, 3.5, 10)
    thresholds, _ = calibrate(normals, defects)
    assert thresholds.method == "f1_optimal" and 2.0 <= thresholds.value < 2.5
    assert thresholds.normal_quantile is not None and thresholds.f1_optimal == thresholds.value
    plain, _ = calibrate(normals)
    assert plain.method == "normal_quantile" and plain.value == plain.normal_quantile
