"""Calibration (``dynasor_client.calibration``): traces, the split, replay and evaluation (against a slow
pure-Python reference), the search's fast paths (against the rules they build), curve fits, JSON,
and the real thing: calibrate on SVAMP train, judge on SVAMP test, via the library and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dynasor_client.calibration import (
    CalibrationResult,
    LabelledTraces,
    MultiStepFamily,
    Replay,
    SearchSpace,
    StaticFamily,
    View,
    bench_certaindex,
    calibrate,
    checkpoint_mask,
    checkpoints,
    default_families,
    default_rule,
    evaluate,
    exact_cluster,
    fit_remaining_curve,
    fold_of,
    label_traces,
    load_rule,
    load_traces,
    paper_rule,
    prefix_majority,
    sample_orders,
    select_split,
    settle_counts,
    split_of,
    threshold_grid,
)
from dynasor_client.certainty import (
    NONE,
    BayesianAgreement,
    Cap,
    EntropyCertainty,
    Hopeless,
    Observations,
    Signal,
    StopRule,
    Threshold,
    TokenBudget,
)
from dynasor_client.certainty.rules import (
    CurveFitAllocation,
    DynamicCurveFit,
    MultiStepThreshold,
    RemainingCurve,
    StaticThreshold,
)

DATA = Path(__file__).parents[1].parent / "shared" / "data"
TRACES = DATA / "traces"
SVAMP = TRACES / "svamp-codex-sc30.jsonl"
needs_data = pytest.mark.skipif(
    not SVAMP.exists(), reason=f"recorded traces not found at {TRACES} (the shared data folder is absent)"
)
CLI = [sys.executable, "-m", "dynasor_client"]


def _env() -> dict[str, str]:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _signals() -> list[Signal]:
    """Entropy plus Adaptive-Consistency's signal when the signals module is there (a pair to combine)."""
    out: list[Signal] = [EntropyCertainty()]
    try:
        from dynasor_client.certainty.signals import BayesianAgreement
    except ImportError:
        return out
    return [*out, BayesianAgreement()]


def _synthetic(questions: int = 24, samples: int = 12, seed: int = 3) -> LabelledTraces:
    """Small labelled traces with missing answers and questions with fewer samples."""
    base = LabelledTraces.synthetic(questions, samples, seed=seed)
    present = base.present.copy()
    present[::5, samples - 3 :] = False  # every fifth question has 3 samples fewer
    labels = np.where(present, base.labels, NONE)
    return LabelledTraces(
        ids=base.ids,
        labels=labels,
        present=present,
        class_correct=base.class_correct,
        tokens=np.where(present, base.tokens, 0),
        rewards=base.rewards,
        confidence=base.confidence,
        prompt_tokens=base.prompt_tokens + 7,
        source="synthetic",
    )


# -- traces and the split ------------------------------------------------------------------------------


def test_exact_cluster() -> None:
    assert exact_cluster(["3", " 3", "4", None, "", "3.0"]) == [0, 0, 1, -1, -1, 2]


def test_split_is_a_stable_hash_of_the_id() -> None:
    assert [split_of(i) for i in ("svamp-0", "svamp-1", "svamp-2", "svamp-3")] == [
        "train",
        "train",
        "test",
        "train",
    ]
    ids = [f"q-{i}" for i in range(4000)]
    fraction = sum(split_of(i) == "test" for i in ids) / len(ids)
    assert 0.27 < fraction < 0.33
    assert {fold_of(i, 5) for i in ids} == set(range(5))
    assert [fold_of(i, 5) for i in ids[:50]] == [fold_of(i, 5) for i in ids[:50]]


@needs_data
def test_load_traces_reads_all_three_formats() -> None:
    svamp = load_traces(SVAMP)
    assert len(svamp) == 600 and all(len(q.samples) == 30 for q in svamp)
    assert svamp[0].samples[0].answer == "51" and svamp[0].prompt_tokens is not None
    math = load_traces(TRACES / "math-qwen25math-sc8.jsonl")
    assert math[0].samples[0].correct is True and math[0].samples[0].reward is not None
    gsm = load_traces(TRACES / "gsm8k-qwen25coder05b-sc8-logprobs.jsonl")
    sample = gsm[0].samples[0]
    assert sample.token_logprobs is not None and len(sample.token_logprobs) == sample.num_tokens
    assert sample.finish_reason in ("stop", "length")
    # the split partitions the questions and does not depend on their order
    train, test = select_split(svamp, "train"), select_split(svamp, "test")
    assert len(train) + len(test) == 600 and not {q.id for q in train} & {q.id for q in test}
    assert [q.id for q in select_split(svamp[::-1], "test")] == [q.id for q in test][::-1]


@needs_data
def test_label_traces_grades_by_flag_or_equivalence() -> None:
    math = load_traces(TRACES / "math-qwen25math-sc8.jsonl")
    data = label_traces(math)
    for i, q in enumerate(math):  # recorded flags: a class is correct when most of its members are
        for label in set(data.labels[i][data.labels[i] >= 0].tolist()):
            flags = [bool(s.correct) for j, s in enumerate(q.samples) if data.labels[i, j] == label]
            majority = sum(flags) * 2 > len(flags) or (sum(flags) * 2 == len(flags) and flags[0])
            assert data.class_correct[i, label] == majority
    assert np.isfinite(data.rewards[data.present]).all()
    svamp = load_traces(SVAMP)[:40]  # no flags: graded by answer equivalence with the gold answer
    data = label_traces(svamp)
    for i, q in enumerate(svamp):
        for j, s in enumerate(q.samples):
            if s.answer is not None and data.labels[i, j] >= 0:
                assert data.class_correct[i, data.labels[i, j]] == (s.answer.strip() == q.gold.strip())


# -- replay and evaluation -------------------------------------------------------------------------------


def test_prefix_majority_ties_and_missing_answers() -> None:
    labels = np.array([[1, 0, 0, 1, NONE, 1], [NONE, NONE, 2, 0, 0, 2]])
    winners = prefix_majority(labels, np.ones_like(labels, dtype=bool))
    assert winners.tolist() == [[1, 1, 0, 0, 0, 1], [NONE, NONE, 2, 2, 0, 0]]


def test_sample_orders_are_paired_and_seeded() -> None:
    data = _synthetic()
    orders = sample_orders(data.ids, data.present, 4, seed=0)
    again = sample_orders(data.ids[3:9], data.present[3:9], 4, seed=0)
    assert np.array_equal(orders[3:9], again)  # a question's orders do not depend on the others
    assert not np.array_equal(orders, sample_orders(data.ids, data.present, 4, seed=1))
    for q in range(data.questions):  # present samples first, each exactly once
        n = int(data.present[q].sum())
        for r in range(4):
            assert sorted(orders[q, r, :n].tolist()) == np.flatnonzero(data.present[q]).tolist()


def _reference(rule: StopRule, replay: Replay, with_rounds: bool) -> tuple[float, float, float]:
    """Accuracy, tokens and rounds computed row by row in plain Python with ``rule(obs)`` per prefix."""
    obs = replay.obs
    cps = set(checkpoints(rule, replay.cap))
    correct, tokens, rounds = [], [], []
    for b in range(obs.shape[0]):
        n = int(obs.valid[b].sum())
        stop = n - 1
        for k in range(n):
            prefix = Observations(
                labels=obs.labels[b : b + 1, : k + 1],
                valid=obs.valid[b : b + 1, : k + 1],
                rewards=obs.rewards[b : b + 1, : k + 1],
                tokens=obs.tokens[b : b + 1, : k + 1],
                confidence=obs.confidence[b : b + 1, : k + 1],
            )
            if rule(prefix):
                stop = k
                break
        counts: dict[int, int] = {}
        leader, lead = None, 0
        for label in obs.labels[b, : stop + 1].tolist():
            if label < 0:
                continue
            counts[label] = counts.get(label, 0) + 1
            if counts[label] > lead:
                leader, lead = label, counts[label]
        q = int(replay.question[b])
        correct.append(leader is not None and bool(replay.data.class_correct[q, leader]))
        tokens.append(int(obs.tokens[b, : stop + 1].sum()))
        if with_rounds:
            rounds.append(_consulted(rule, obs, b, int(obs.valid[b, : stop + 1].sum()), sorted(cps)))
    return float(np.mean(correct)), float(np.mean(tokens)), float(np.mean(rounds)) if rounds else 0.0


def _consulted(rule: StopRule, obs: Observations, b: int, stop_count: int, cps: list[int]) -> int:
    """Rounds of row ``b`` as a program takes them (``RoundPlan``): from each consulted checkpoint on
    to the next one where ``rule.may_fire`` on the observations so far; the stop is always consulted."""
    valid = np.flatnonzero(obs.valid[b])
    position, rounds = 0, 0
    while position < stop_count:
        held = valid[:position]
        so_far = Observations(
            labels=obs.labels[b : b + 1, held],
            valid=np.ones((1, len(held)), dtype=bool),
            rewards=obs.rewards[b : b + 1, held],
            tokens=obs.tokens[b : b + 1, held],
            confidence=obs.confidence[b : b + 1, held],
        )
        later = [c for c in cps if c > position]
        position = next((c for c in later if c >= stop_count or rule.may_fire(so_far, c)[0]), stop_count)
        rounds += 1
    return rounds


@pytest.mark.parametrize(
    ("rule", "with_rounds"),
    [
        (Cap(10), True),
        (StaticThreshold(4, 0.6, 10), True),
        (MultiStepThreshold({2: 1.0, 4: 0.7, 6: 0.5}, cap=10), True),
        (MultiStepThreshold({3: 0.9}, cap=10) | Hopeless(below={5: 0.3}), True),
        (Threshold(EntropyCertainty(), 0.8, every=2, min_obs=2) | Cap(10), True),
        (Threshold(BayesianAgreement(), 0.9, min_obs=2) | Cap(10), True),
        (Hopeless(after=6, below=0.3) | Threshold(EntropyCertainty(), 1.0, at=[3]), True),
        (TokenBudget(300) | Cap(9), True),
        (CurveFitAllocation(3, RemainingCurve(9.0, 1.3), cap=10), False),
        (DynamicCurveFit(2, RemainingCurve(6.0, 0.8), cap=10, scale=0.7), False),
    ],
)
def test_evaluate_equals_a_slow_reference(rule: StopRule, with_rounds: bool) -> None:
    replay = Replay(_synthetic(), orders=3, cap=10, seed=5)
    ev = evaluate(rule, replay)
    accuracy, tokens, rounds = _reference(rule, replay, with_rounds)
    assert ev.accuracy == pytest.approx(accuracy, abs=1e-12)
    assert ev.tokens == pytest.approx(tokens, abs=1e-9)
    if with_rounds:
        assert ev.rounds == pytest.approx(rounds, abs=1e-12)
    assert ev.questions == 24 and ev.orders == 3 and ev.cap == 10
    lo, hi = ev.accuracy_ci95
    assert lo <= ev.accuracy <= hi


def test_baseline_uses_every_sample_and_evaluate_accepts_raw_data() -> None:
    data = _synthetic()
    replay = Replay(data, orders=2, cap=12, seed=0)
    base = replay.baseline()
    assert base.saved == 0.0 and base.rounds == 1.0
    assert base.samples == pytest.approx(float(data.present.sum()) / data.questions)
    assert evaluate(Cap(12), data, orders=2, cap=12).accuracy == base.accuracy


# -- the search's fast paths -------------------------------------------------------------------------------


def test_fast_paths_reproduce_the_rules_they_build() -> None:
    replay = Replay(_synthetic(40, 16), orders=4, cap=16, seed=1)
    space = SearchSpace(replay, _signals())
    view = View(space, np.arange(replay.rows), "all")
    checked = 0
    for family in default_families():
        for i, recipe in enumerate(family.recipes(space)):
            if i % 9:
                continue
            fitted = recipe.fit(view)
            stop, rounds = fitted.stops(view)
            rule = rule_round_trip(fitted.rule())
            rule_stop = replay.stops(rule)
            assert np.array_equal(stop, rule_stop), recipe.describe()
            assert np.array_equal(rounds, replay.rounds_at(checkpoint_mask(rule, replay.obs), rule_stop))
            checked += 1
    assert checked > 40


def rule_round_trip(rule: StopRule) -> StopRule:
    from dynasor_client.certainty.rules import rule_from_json

    return rule_from_json(json.loads(json.dumps(rule.to_dict())))


def test_threshold_grid_separates_distinct_values() -> None:
    grid = threshold_grid(np.array([0.0, 0.5, 0.5 + 1e-15, 0.689, 1.0, 1.0]))
    assert grid.tolist() == [0.0, 0.25, 0.5945, 0.8445]
    wide = threshold_grid(np.random.default_rng(0).random(10_000), max_size=8)
    assert len(wide) == 8 and np.all(np.diff(wide) > 0)


# -- curves ------------------------------------------------------------------------------------------------


def test_settle_counts() -> None:
    winners = np.array([[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 1], [NONE, 0, 0, 0]])
    assert settle_counts(winners, np.ones_like(winners, dtype=bool)).tolist() == [1, 2, 4, 2]


def test_fit_remaining_curve_recovers_a_known_curve() -> None:
    rng = np.random.default_rng(0)
    h = rng.random(4000)
    y = 14.0 * (1.0 - h) ** 2.5 + rng.normal(0.0, 0.5, size=h.size)
    curve = fit_remaining_curve(h, y, max_work=30.0)
    assert curve.a == pytest.approx(14.0, rel=0.05) and curve.b == pytest.approx(2.5, rel=0.05)
    assert np.all(np.diff(curve(np.linspace(0, 1, 50))) <= 0)  # more certain, less work
    flat = fit_remaining_curve(np.full(10, 0.5), np.full(10, 3.0))
    assert flat.b == 1.0 and flat.a == pytest.approx(6.0)


# -- results as JSON ---------------------------------------------------------------------------------------


def test_calibration_result_round_trip(tmp_path: Path) -> None:
    replay = Replay(_synthetic(40, 16), orders=4, cap=16, seed=1)
    families = [StaticFamily(detects=(3, 5)), MultiStepFamily(hopeless=(False,), pair_top=0)]
    result = calibrate(replay, epsilon=0.02, families=families, signals=[EntropyCertainty()], folds=3)
    path = tmp_path / "calib.json"
    result.save(path)
    loaded = CalibrationResult.load(path)
    assert loaded.to_dict() == json.loads(path.read_text())
    assert loaded.rule.to_dict() == result.rule.to_dict()
    assert load_rule(path).to_dict() == result.rule.to_dict()
    assert evaluate(loaded.rule, replay).accuracy == result.expected.accuracy
    assert result.expected.accuracy >= result.baseline.accuracy - 0.02 - 1e-9 or result.search["notes"]
    rule_only = tmp_path / "rule.json"
    result.save_rule(rule_only)
    data = json.loads(rule_only.read_text())
    assert "question_ids" not in data["fitted_on"] and load_rule(rule_only).to_dict() == result.rule.to_dict()
    assert set(loaded.reference) >= {"paper_static"}
    with pytest.raises(ValueError):
        CalibrationResult.from_dict({"format": "something else"})


def test_objective_and_max_rounds_are_respected() -> None:
    replay = Replay(_synthetic(40, 16), orders=4, cap=16, seed=1)
    families = [MultiStepFamily(hopeless=(False,), pair_top=0)]
    result = calibrate(replay, epsilon=0.05, families=families, signals=[EntropyCertainty()], max_rounds=1.5)
    assert result.cross_validated is not None and result.cross_validated.rounds <= 1.5
    with pytest.raises(ValueError):
        calibrate(replay, objective="speed")  # type: ignore[arg-type]


# -- SVAMP: calibrate on train, judge on test --------------------------------------------------------------


@pytest.fixture(scope="module")
def svamp_test() -> Iterator[Replay]:
    if not SVAMP.exists():
        pytest.skip(f"recorded traces not found at {TRACES} (the shared data folder is absent)")
    yield Replay(label_traces(select_split(load_traces(SVAMP), "test")))


@needs_data
def test_calibrated_rule_generalises_to_held_out_questions(svamp_test: Replay) -> None:
    train = select_split(load_traces(SVAMP), "train")
    families = [
        StaticFamily(),
        MultiStepFamily(schedules=[(2, 3, 4, 6, 8, 12, 16, 24)], hopeless=(False,), pair_top=0),
    ]
    result = calibrate(train, epsilon=0.002, families=families)
    assert result.fitted_on["questions"] == len(train)
    assert result.cross_validated is not None
    assert result.cross_validated.accuracy >= result.baseline.accuracy - 0.002 - 1e-9
    base = svamp_test.baseline()
    calibrated = svamp_test.evaluate(result.rule)
    paper = svamp_test.evaluate(paper_rule(30))
    assert calibrated.accuracy >= base.accuracy - 0.01
    assert calibrated.saved > 0.5
    assert calibrated.tokens < paper.tokens  # beats the paper's static rule on unseen questions


@needs_data
def test_default_rule_on_held_out_questions(svamp_test: Replay) -> None:
    rule = default_rule()
    base, ev = svamp_test.baseline(), svamp_test.evaluate(rule)
    assert ev.accuracy >= base.accuracy - 0.01 and ev.saved > 0.5


@needs_data
def test_cli_calibrate_then_evaluate_on_test(tmp_path: Path) -> None:
    out = tmp_path / "calib.json"
    args = ["calibrate", "--traces", str(SVAMP), "--out", str(out), "--split", "train", "--orders", "5"]
    args += ["--folds", "3"]
    proc = subprocess.run(
        [*CLI, *args, "--evaluate-split", "test"], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "saved" in proc.stdout and f"wrote {out}" in proc.stdout
    data = json.loads(out.read_text())
    assert data["fitted_on"]["split"] == "train" and data["fitted_on"]["orders"] == 5
    assert all(split_of(i) == "train" for i in data["fitted_on"]["question_ids"])
    held = data["held_out"]
    assert held["split"] == "test" and held["questions"] == svamp_questions("test")
    assert held["calibrated"]["accuracy"] >= held["baseline"]["accuracy"] - 0.01
    assert held["calibrated"]["saved"] > 0.5
    assert held["calibrated"]["tokens"] < held["reference"]["paper_static"]["tokens"]
    assert CalibrationResult.load(out).held_out == held


def svamp_questions(split: str) -> int:
    return sum(1 for q in load_traces(SVAMP) if split_of(q.id) == split)


def test_cli_errors_are_reported(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*CLI, "calibrate", "--traces", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "x.json")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode == 2 and "error" in proc.stderr


# -- speed ---------------------------------------------------------------------------------------------------


def test_bench_certaindex_cli(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [*CLI, "bench", "certaindex", "--json", str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["replay"] == {"questions": 1000, "samples": 30, "orders": 20, "source": "synthetic"}
    assert figures["cluster_32_numbers_ms"] < 1.0  # goal: well under a millisecond
    assert figures["evaluate_total_s"] < 10.0  # goal: a few seconds (about 0.5 s on 2 cores)


def test_bench_figures_are_consistent() -> None:
    figures = bench_certaindex(questions=50, orders=2, repeat=1)
    assert 0.0 <= figures["accuracy"] <= 1.0 and 0.0 <= figures["saved"] <= 1.0
    assert figures["evaluate_total_s"] >= figures["evaluate_rule_s"]
