"""The paper's allocation policies (``certainty.rules``): decisions on hand-made observations,
``remaining`` (what a budget manager asks), checkpoints and rounds, and JSON round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynasor_client.certainty import (
    AnyOf,
    BayesianAgreement,
    Cap,
    EntropyCertainty,
    Hopeless,
    Observations,
    StopRule,
    Threshold,
    TokenBudget,
    adaptive_consistency,
    default_rule,
    rule_from_dict,
)
from dynasor_client.certainty.rules import (
    NO_LIMIT,
    CurveFitAllocation,
    DynamicCurveFit,
    MultiStepThreshold,
    RemainingCurve,
    StaticThreshold,
    checkpoint_mask,
    checkpoints,
    remaining,
)

UNANIMOUS = [0] * 30
FOUR_ONE = [0, 1, 0, 0, 0] + [0] * 25  # H~ at 5 = 0.689 (4/1 split)
DISTINCT = list(range(30))


def _stop_count(rule: object, labels: list[int]) -> int:
    """Observations used when ``rule`` stops on one row (the whole row when it never fires)."""
    obs = Observations.single(labels)
    fire = rule.batch(obs)[0]  # type: ignore[attr-defined]
    return int(np.argmax(fire)) + 1 if fire.any() else len(labels)


def _rounds(rule: object, labels: list[int]) -> int:
    obs = Observations.single(labels)
    stop = _stop_count(rule, labels) - 1
    check = checkpoint_mask(rule, obs)[0]  # type: ignore[arg-type]
    return int(check[: stop + 1].sum()) + int(not check[stop])


def test_static_threshold_stops_only_at_detect() -> None:
    rule = StaticThreshold(5, 0.7, 30)
    assert _stop_count(rule, UNANIMOUS) == 5
    assert _stop_count(rule, FOUR_ONE) == 30  # 0.689 < 0.7: run to the cap
    assert _stop_count(StaticThreshold(5, 0.68, 30), FOUR_ONE) == 5
    assert _rounds(rule, UNANIMOUS) == 1 and _rounds(rule, FOUR_ONE) == 2
    assert checkpoints(rule, 30) == (5, 30)


def test_static_threshold_remaining() -> None:
    rule = StaticThreshold(5, 0.7, 30)
    assert rule.remaining(Observations.single([0, 0])).tolist() == [3]  # to the detect step
    assert rule.remaining(Observations.single(FOUR_ONE[:5])).tolist() == [25]  # failed: to the cap
    assert rule.remaining(Observations.single(UNANIMOUS[:5])).tolist() == [0]  # stopped


def test_multi_step_threshold() -> None:
    rule = MultiStepThreshold({3: 1.0, 5: 0.6, 10: 0.5}, cap=30)
    assert _stop_count(rule, UNANIMOUS) == 3
    assert _stop_count(rule, FOUR_ONE) == 5  # 2/1 split at 3 fails, 0.689 >= 0.6 at 5
    assert _stop_count(rule, DISTINCT) == 30
    assert _rounds(rule, FOUR_ONE) == 2 and _rounds(rule, DISTINCT) == 4
    assert checkpoints(rule, 30) == (3, 5, 10, 30)
    assert rule.remaining(Observations.single([0, 1, 2, 3])).tolist() == [1]
    assert rule.remaining(Observations.single(DISTINCT[:12])).tolist() == [18]
    with pytest.raises(ValueError):
        MultiStepThreshold({40: 0.5}, cap=30)


def test_hopeless_cut_checks_only_its_steps() -> None:
    cut = Hopeless(below={4: 0.3, 8: 0.5})
    assert _stop_count(cut, DISTINCT) == 4
    assert _stop_count(cut, UNANIMOUS) == 30
    combined = MultiStepThreshold({2: 1.0}, cap=30) | cut
    assert _stop_count(combined, UNANIMOUS) == 2 and _stop_count(combined, DISTINCT) == 4
    assert cut.remaining(Observations.single(UNANIMOUS[:9])).tolist() == [NO_LIMIT]
    assert remaining(combined | Cap(30), Observations.single(UNANIMOUS[:1])).tolist() == [1]


def test_curve_fit_allocation_allocates_once() -> None:
    curve = RemainingCurve(10.0, 1.0)
    rule = CurveFitAllocation(3, curve, cap=30)
    assert _stop_count(rule, UNANIMOUS) == 3  # H~ = 1: f = 0, stop at the detect step
    labels = [0, 0, 1] + [0] * 27
    h = (math.log(3) - (-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))) / math.log(3)
    wanted = round(10.0 * (1 - h))
    assert _stop_count(rule, labels) == 3 + wanted
    assert _rounds(rule, labels) == 2
    assert rule.remaining(Observations.single(labels[:3])).tolist() == [wanted]
    assert rule.remaining(Observations.single(labels[:1])).tolist() == [2]
    # scale stretches the allocation; the cap bounds it
    assert _stop_count(CurveFitAllocation(3, curve, cap=30, scale=100.0), labels) == 30


def test_dynamic_curve_fit_reallocates() -> None:
    curve = RemainingCurve(4.0, 1.0)
    rule = DynamicCurveFit(2, curve, cap=30)
    assert _stop_count(rule, UNANIMOUS) == 2
    # 0,1 at 2 (H~ = 0): want 4 more -> check at 6; then 0,1,0,0,0,0: H~ = 0.35, want 3 -> 9 ...
    labels = [0, 1] + [0] * 28
    stop = _stop_count(rule, labels)
    assert 6 < stop < 30
    check = checkpoint_mask(rule, Observations.single(labels))[0]
    assert check[1] and check[5] and check[stop - 1]
    assert _rounds(rule, labels) == int(check[:stop].sum())


def test_rounds_as_defined_in_the_issue() -> None:
    """A rule checked at 5, 10 and 30 that stops at 10 took 2 rounds."""
    rule = Threshold(EntropyCertainty(), 1.0, at=[5]) | Threshold(EntropyCertainty(), 0.0, at=[10]) | Cap(30)
    assert checkpoints(rule, 30) == (5, 10, 30)
    assert _stop_count(rule, DISTINCT) == 10 and _rounds(rule, DISTINCT) == 2
    # checked after every observation from 2 on, stopping at 7: counts 2..7 are 6 rounds
    every = Threshold(EntropyCertainty(), 1.0, min_obs=2) | Cap(7)
    assert _stop_count(every, DISTINCT) == 7 and _rounds(every, DISTINCT) == 6


SKIPPING_RULES: list[StopRule] = [
    default_rule(),
    adaptive_consistency(0.95) | Cap(12),
    StaticThreshold(5, 0.7, 12),
    MultiStepThreshold({3: 1.0, 6: 0.75, 9: 0.5}, cap=12),
    Threshold(EntropyCertainty(), 0.8, every=2, min_obs=2) & Threshold(BayesianAgreement(), 0.9, every=3),
    MultiStepThreshold({4: 0.9}, cap=12) | Hopeless(below={6: 0.3}) | Hopeless(8, 0.2) | TokenBudget(900),
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-1, 3), min_size=2, max_size=12), st.data())
def test_may_fire_is_true_wherever_the_rule_fires(labels: list[int], data: st.DataObject) -> None:
    # Sound: a rule that fires at `count` observations was, at any earlier point, one that may fire.
    held = data.draw(st.integers(0, len(labels) - 1))
    so_far = Observations.single(labels[:held], tokens=[100] * held)
    for rule in SKIPPING_RULES:
        fires = rule.batch(Observations.single(labels, tokens=[100] * len(labels)))[0]
        for count in range(held + 1, len(labels) + 1):
            if fires[count - 1]:
                assert rule.may_fire(so_far, count)[0], (rule, labels, held, count)


def test_may_fire_rules_out_checks_a_split_vote_cannot_pass() -> None:
    # The default rule after a 2-2 split at 4: even if the next samples all agree, its thresholds
    # at 6 and 8 are out of reach; at 12 they are not. Rules on unknown features never rule out.
    rule = default_rule()
    split = Observations.single([0, 1, 0, 1])
    assert [bool(rule.may_fire(split, c)[0]) for c in (6, 8, 12, 30)] == [False, False, True, True]
    assert not rule.may_fire(split, 7)[0]  # not one of its checkpoints
    assert TokenBudget(500).may_fire(split, 5)[0] and Hopeless(6, 0.3).may_fire(split, 6)[0]
    assert not Hopeless(6, 0.3).may_fire(split, 5)[0] and not Cap(30).may_fire(split, 29)[0]
    assert (Cap(30) | rule).may_fire(Observations.single([0] * 4), 6)[0]


@pytest.mark.parametrize(
    "rule",
    [
        StaticThreshold(5, 0.7, 30),
        MultiStepThreshold({3: 1.0, 6: 0.75, 12: 0.5}, cap=30),
        Hopeless(below={8: 0.2, 16: 0.4}),
        CurveFitAllocation(4, RemainingCurve(12.5, 1.7), cap=30, scale=1.5),
        DynamicCurveFit(3, RemainingCurve(8.0, 0.9), cap=30, scale=0.75),
        AnyOf([MultiStepThreshold({4: 0.9}, cap=30), Hopeless(below={10: 0.1}), Cap(30)]),
    ],
)
def test_json_round_trip_keeps_decisions(rule: object) -> None:
    data = json.loads(json.dumps(rule.to_dict()))  # type: ignore[attr-defined]
    again = rule_from_dict(data)
    assert again.to_dict() == data
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(64, 30))
    labels[rng.random((64, 30)) < 0.05] = -1
    obs = Observations(labels=labels, valid=np.ones((64, 30), dtype=bool))
    assert np.array_equal(again.batch(obs), rule.batch(obs))  # type: ignore[attr-defined]
    assert np.array_equal(checkpoint_mask(again, obs), checkpoint_mask(rule, obs))  # type: ignore[arg-type]


def test_remaining_curve_shape_and_validation() -> None:
    curve = RemainingCurve(10.0, 2.0)
    values = curve(np.array([0.0, 0.5, 1.0, np.nan]))
    assert values.tolist() == [10.0, 2.5, 0.0, 10.0]
    with pytest.raises(ValueError):
        RemainingCurve(-1.0, 1.0)
    with pytest.raises(ValueError):
        RemainingCurve(1.0, 1.0, form="cubic")


def test_one_hopeless_rule_in_both_forms_and_in_the_budget() -> None:
    from dynasor_client.budget import BudgetManager

    split = Observations.single([0, 1, 2, 3, 4, 5, 6, 7])
    every = Hopeless(after=6, below=0.3)
    steps = Hopeless(below={4: 0.3, 8: 0.5})
    assert every.batch(split)[0].tolist() == [False] * 5 + [True] * 3
    assert steps.batch(split)[0].tolist() == [False] * 3 + [True] + [False] * 3 + [True]
    for rule in (every, steps):
        again = rule_from_dict(rule.to_dict())
        assert again.batch(split).tolist() == rule.batch(split).tolist()
    legacy = {
        "kind": "hopeless_cut",
        "below": [[4, 0.3], [8, 0.5]],
        "signal": {"name": "entropy", "params": {}},
    }
    assert rule_from_dict(legacy).batch(split).tolist() == steps.batch(split).tolist()  # files written before
    with pytest.raises(ValueError, match="not both"):
        Hopeless(after=3, below={4: 0.3})
    assert not every.cuts(6, float("nan")) and every.cuts(6, 0.1) and not every.cuts(5, 0.1)
    manager = BudgetManager(hopeless=steps)
    account = manager.open()
    account.steps, account.certainty = 4, 0.2
    assert manager.hopeless(account)
    account.steps = 5
    assert not manager.hopeless(account)  # the step form checks only its steps, in the budget too
