"""The robust calibration (``dynasor_client.calibration``): the loss against the full budget with an
interval over questions, the bootstrap upper bound the search judges candidates by, and where both
show up (calibration JSON, ``calibrate`` CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynasor_client.calibration import (
    CalibrationResult,
    LossEstimate,
    MultiStepFamily,
    QuestionBootstrap,
    Replay,
    StaticFamily,
    calibrate,
    label_traces,
    load_rule,
    load_traces,
    loss_estimate,
    search,
    select_split,
)
from dynasor_client.certainty import EntropyCertainty, default_rule
from dynasor_client.cli import main

TRACES = Path(__file__).parents[1].parent / "shared" / "data" / "traces"
SVAMP = TRACES / "svamp-codex-sc30.jsonl"
needs_data = pytest.mark.skipif(
    not SVAMP.exists(), reason=f"recorded traces not found at {TRACES} (the shared data folder is absent)"
)
EPSILON = 0.01


def test_bootstrap_interval_follows_a_skewed_loss() -> None:
    # 1 question of 40 loses everything, the rest nothing: the point is 2.5 points
    lost = np.zeros(40)
    lost[7] = 1.0
    est = loss_estimate(lost, confidence=0.9, boots=2000, seed=1)
    assert est.loss == pytest.approx(0.025)
    assert est.ci95[0] == 0.0  # resamples without the question lose nothing; none loses less
    assert est.loss < est.upper <= est.ci95[1]
    assert est.questions == 40 and est.boots == 2000
    assert LossEstimate.from_dict(json.loads(json.dumps(est.to_dict()))) == est
    flat = loss_estimate(np.full(25, 0.1))
    assert flat.ci95 == pytest.approx((0.1, 0.1)) and flat.upper == pytest.approx(0.1)
    boot = QuestionBootstrap(40, boots=500, seed=1)
    assert np.allclose(boot.weights.sum(axis=1), 1.0)  # each resample draws 40 questions
    assert np.array_equal(boot.weights, QuestionBootstrap(40, boots=500, seed=1).weights)  # paired
    with pytest.raises(ValueError):
        boot.means(np.zeros(39))
    with pytest.raises(ValueError):
        loss_estimate(lost, confidence=1.0)


@pytest.fixture(scope="module")
def small_svamp() -> Replay:
    """A small calibration set from real traces: 40 SVAMP train questions, where one unlucky
    question moves the loss by 2.5 points, far more than the tolerance."""
    if not SVAMP.exists():
        pytest.skip(f"recorded traces not found at {TRACES}")
    train = select_split(load_traces(SVAMP), "train")[:40]
    return Replay(label_traces(train, source=SVAMP.name), orders=8, cap=30, seed=0)


@needs_data
def test_bootstrap_bound_rejects_what_the_point_estimate_accepts(small_svamp: Replay) -> None:
    families = [StaticFamily(detects=(2, 3, 4, 5, 6, 8))]
    signals = [EntropyCertainty()]
    robust = search(small_svamp, epsilon=EPSILON, families=families, signals=signals, folds=1, confidence=0.9)
    point = search(small_svamp, epsilon=EPSILON, families=families, signals=signals, folds=1, safety=0.0)
    baseline = small_svamp.baseline().accuracy
    # every candidate's bound is at least its point loss, and some that the point accepts it rejects
    rejected = []
    for cand in robust.leaderboard:
        assert cand.loss_upper is not None
        loss = baseline - cand.score.accuracy
        assert cand.loss_upper >= loss - 1e-9 or loss <= 0
        if loss <= EPSILON and not cand.feasible:
            rejected.append(cand)
    assert rejected, "the bootstrap bound should reject a candidate the point estimate accepts"
    # the robust choice keeps its bound within the tolerance, and pays for it in tokens
    assert robust.loss is not None and robust.loss.upper <= EPSILON + 1e-12
    assert robust.loss.confidence == 0.9
    assert point.expected.tokens < robust.expected.tokens
    assert point.loss is not None and point.loss.upper > EPSILON  # what the point choice risks


@needs_data
def test_calibration_reports_its_expected_loss(small_svamp: Replay, tmp_path: Path) -> None:
    families = [MultiStepFamily(schedules=[(3, 6, 12)], hopeless=(False,), pair_top=0)]
    result = calibrate(
        small_svamp, epsilon=EPSILON, families=families, signals=[EntropyCertainty()], folds=3, boots=300
    )
    assert result.fitted_on["confidence"] == 0.95 and result.fitted_on["boots"] == 300
    loss = result.expected_loss
    assert loss is not None and loss.ci95[0] <= loss.loss <= loss.ci95[1] and loss.questions == 40
    assert result.cross_validated is not None
    assert loss.loss == pytest.approx(result.baseline.accuracy - result.cross_validated.accuracy)
    assert "expected loss on unseen questions" in result.summary()
    path, rule_path = tmp_path / "calib.json", tmp_path / "rule.json"
    result.save(path)
    assert CalibrationResult.load(path).expected_loss == loss
    result.save_rule(rule_path)
    assert json.loads(rule_path.read_text())["expected_loss"]["upper"] == loss.upper
    assert load_rule(rule_path).to_dict() == result.rule.to_dict()
    assert default_rule().to_dict()  # the shipped rule file still loads


@needs_data
def test_calibrate_cli_prints_the_loss_on_held_out_questions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    math = TRACES / "math-qwen25math-sc8.jsonl"
    if not math.exists():
        pytest.skip(f"{math} not found")
    out = tmp_path / "calib.json"
    args = ["calibrate", "--traces", str(math), "--out", str(out), "--cap", "8", "--orders", "4"]
    assert main([*args, "--evaluate-split", "test", "--confidence", "0.8"]) == 0
    printed = capsys.readouterr().out
    assert "expected loss on unseen questions" in printed and "loss on these unseen questions" in printed
    data = json.loads(out.read_text())
    assert data["fitted_on"]["confidence"] == 0.8
    held = data["held_out"]["loss"]
    assert held["ci95"][0] <= held["loss"] <= held["ci95"][1]
    assert held["questions"] == data["held_out"]["questions"]
    assert main([*args, "--confidence", "0"]) == 0  # the normal margin instead
    assert json.loads(out.read_text())["fitted_on"]["confidence"] is None
