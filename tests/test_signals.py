"""Confidence signals, per-observation features and the rule vocabulary (``certainty.signals``,
``certainty.rules``): properties checked with hypothesis against plain-Python references, known
values, JSON round trips, and features on real recorded logprobs and rewards."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import integrate, special, stats  # type: ignore[import-untyped,unused-ignore]
from scipy.special import betainc  # type: ignore[import-untyped,unused-ignore]

from dynasor_client.certainty import EntropyCertainty, Observations, Signal, StopRule, rule_from_dict
from dynasor_client.certainty.rules import (
    adaptive_consistency,
    confidence_at_least,
    esc,
    probe_consistency_at_least,
    reward_at_least,
)
from dynasor_client.certainty.signals import (
    DEFAULT_HESITATION_WORDS,
    BayesianAgreement,
    ConfidenceCertainty,
    MeanLogprobCertainty,
    OutputLengthCertainty,
    ProbeConsistency,
    RewardCertainty,
    WindowAgreement,
    bottom_group_confidence,
    group_confidence,
    is_hesitant,
    lowest_group_confidence,
    lowest_window_mean_logprob,
    mean_logprob,
    reduce_step_rewards,
    signal_from_dict,
    signal_to_dict,
    tail_confidence,
    token_confidence,
)

DATA = Path(__file__).parents[1].parent / "shared" / "data"
TRACES = DATA / "traces"

SIGNALS: list[Signal] = [
    EntropyCertainty(),
    RewardCertainty(),
    RewardCertainty("max", bounds=(-4, 6)),
    RewardCertainty("min", scale=2.0, offset=1.0, answered_only=True),
    ProbeConsistency(),
    ProbeConsistency(1),
    ConfidenceCertainty(),
    ConfidenceCertainty(-1.0, "exp"),
    MeanLogprobCertainty(),
    MeanLogprobCertainty("min"),
    BayesianAgreement(),
    BayesianAgreement(2),
    OutputLengthCertainty(),
    OutputLengthCertainty(100),
    WindowAgreement(),
    WindowAgreement(3, fraction=True),
]
ORDER_FREE = [s for s in SIGNALS if not isinstance(s, ProbeConsistency | WindowAgreement)]
LABEL_ONLY = [
    EntropyCertainty(),
    BayesianAgreement(),
    BayesianAgreement(3),
    WindowAgreement(4),
    WindowAgreement(2, fraction=True),
    ProbeConsistency(3),
    ConfidenceCertainty(),
]

RELAXED = settings(max_examples=30, deadline=None)

# -- strategies and helpers -------------------------------------------------------------------------


def _maybe_nan(elements: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.one_of(st.just(math.nan), elements)


@st.composite
def observations(draw: st.DrawFn, max_b: int = 4, max_k: int = 9, all_valid: bool = False) -> Observations:
    b = draw(st.integers(1, max_b))
    k = draw(st.integers(0, max_k))
    shape = (b, k)
    valid = np.ones(shape, dtype=bool) if all_valid else draw(arrays(np.bool_, shape))
    return Observations(
        labels=draw(arrays(np.int64, shape, elements=st.integers(-1, 3))),
        valid=valid,
        rewards=draw(arrays(np.float64, shape, elements=_maybe_nan(st.floats(-8, 8)))),
        tokens=draw(arrays(np.int64, shape, elements=st.integers(0, 5000))),
        confidence=draw(arrays(np.float64, shape, elements=_maybe_nan(st.floats(-3, 15)))),
        hesitant=draw(arrays(np.bool_, shape)),
    )


def _row(obs: Observations, i: int) -> Observations:
    return Observations(
        labels=obs.labels[i : i + 1],
        valid=obs.valid[i : i + 1],
        rewards=obs.rewards[i : i + 1],
        tokens=obs.tokens[i : i + 1],
        confidence=obs.confidence[i : i + 1],
        hesitant=obs.hesitant[i : i + 1],
    )


def _columns(obs: Observations, idx: np.ndarray) -> Observations:
    """The observations at positions ``idx`` of a single row (B = 1), all valid."""
    return Observations(
        labels=obs.labels[:, idx],
        valid=np.ones((1, len(idx)), dtype=bool),
        rewards=obs.rewards[:, idx],
        tokens=obs.tokens[:, idx],
        confidence=obs.confidence[:, idx],
        hesitant=obs.hesitant[:, idx],
    )


def _close(a: np.ndarray, b: np.ndarray, tol: float = 1e-9) -> None:
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


def _random_obs(b: int, k: int, seed: int = 0) -> Observations:
    rng = np.random.default_rng(seed)
    return Observations(
        labels=rng.integers(-1, 5, size=(b, k)),
        valid=rng.random((b, k)) < 0.9,
        rewards=np.where(rng.random((b, k)) < 0.1, np.nan, rng.normal(1, 2, (b, k))),
        tokens=rng.integers(0, 3000, (b, k)),
        confidence=np.where(rng.random((b, k)) < 0.1, np.nan, rng.uniform(-1, 12, (b, k))),
        hesitant=rng.random((b, k)) < 0.2,
    )


# -- best cases: no future beats them ---------------------------------------------------------------


@RELAXED
@given(observations(max_b=3, max_k=8), st.lists(st.integers(-1, 4), min_size=1, max_size=8))
def test_best_case_bounds_every_future(obs: Observations, future: list[int]) -> None:
    # Whatever the observations to come, no signal ends above its best case (label-only signals
    # bound it; the others answer 1, no bound).
    for signal in [*LABEL_ONLY, *SIGNALS]:
        for i in range(obs.shape[0]):
            held = obs.labels[i][obs.valid[i]].tolist()
            count = len(held) + len(future)
            value = signal(Observations.single(held + future)).value
            bound = signal.best_case(_row(obs, i), count)[0]
            assert np.isnan(value) or value <= bound + 1e-9, (signal, held, future)


def test_best_case_of_agreement_signals() -> None:
    # 2-2 at four samples: at best the next two join one side (4-2); no answer yet: all agree.
    split = Observations.single([0, 1, 0, 1])
    for signal in (EntropyCertainty(), BayesianAgreement()):
        assert signal.best_case(split, 6)[0] == pytest.approx(
            signal(Observations.single([0, 1, 0, 1, 0, 0])).value
        )
        assert signal.best_case(Observations.single([]), 4)[0] == pytest.approx(
            signal(Observations.single([7] * 4)).value
        )
    assert BayesianAgreement().best_case(split, 6)[0] < 0.8  # P(Beta(5, 3) > 1/2) = 0.77
    assert RewardCertainty().best_case(split, 6)[0] == 1.0  # rewards to come are unknown: no bound


# -- every signal: batch == row by row, invalid positions, range, NaN/empty ---------------------------


@RELAXED
@given(observations())
def test_every_signal_batch_equals_row_by_row(obs: Observations) -> None:
    for signal in SIGNALS:
        values, support = signal.batch(obs), signal.support(obs)
        assert values.shape == obs.shape and support.shape == obs.shape
        assert np.all(np.isnan(values) | ((values >= 0) & (values <= 1))), signal
        for i in range(obs.shape[0]):
            row = _row(obs, i)
            _close(values[i : i + 1], signal.batch(row))
            np.testing.assert_array_equal(support[i : i + 1], signal.support(row))
            single = signal(row)
            if row.valid.any():
                last = int(np.flatnonzero(row.valid[0])[-1])
                _close(np.array(single.value), values[i, last])
                assert single.support == support[i, last]
            else:
                assert math.isnan(single.value) and single.support == 0


@RELAXED
@given(observations(max_b=1, max_k=12))
def test_invalid_positions_are_skipped(obs: Observations) -> None:
    """A signal sees only valid observations; an invalid position repeats the value before it."""
    idx = np.flatnonzero(obs.valid[0])
    before = np.cumsum(obs.valid[0]) - 1
    for signal in SIGNALS:
        values = signal.batch(obs)[0]
        compact = signal.batch(_columns(obs, idx))[0]
        _close(values[idx], compact)
        for k in np.flatnonzero(~obs.valid[0]):
            _close(np.array(values[k]), np.array(compact[before[k]] if before[k] >= 0 else np.nan))


@pytest.mark.parametrize("signal", SIGNALS, ids=repr)
def test_empty_and_missing(signal: Signal) -> None:
    empty = Observations(labels=np.zeros((3, 0), dtype=np.int64), valid=np.zeros((3, 0), dtype=bool))
    assert signal.batch(empty).shape == (3, 0)
    none_valid = Observations(labels=np.zeros((1, 4), dtype=np.int64), valid=np.zeros((1, 4), dtype=bool))
    assert np.isnan(signal.batch(none_valid)).all()
    result = signal(none_valid)
    assert math.isnan(result.value) and result.support == 0
    # No features at all (rewards, confidences NaN; tokens 0): the feature signals are undefined.
    bare = Observations.single([1, 1, 2])
    values = signal.batch(bare)
    if isinstance(
        signal, RewardCertainty | ConfidenceCertainty | MeanLogprobCertainty | OutputLengthCertainty
    ):
        assert np.isnan(values).all() and (signal.support(bare) == 0).all()
    else:
        assert not np.isnan(values).any()


@RELAXED
@given(observations(max_b=1, max_k=10, all_valid=True), st.randoms(use_true_random=False))
def test_order_free_signals_ignore_order(obs: Observations, rnd: Any) -> None:
    order = np.arange(obs.shape[1])
    rnd.shuffle(order)
    shuffled = obs.take(order)
    for signal in ORDER_FREE:
        a, b = signal(obs), signal(shuffled)
        _close(np.array(a.value), np.array(b.value))
        assert a.support == b.support


@RELAXED
@given(observations(max_b=3, max_k=10), st.permutations([0, 1, 2, 3]))
def test_label_signals_ignore_relabelling(obs: Observations, perm: list[int]) -> None:
    mapping = np.array(perm)
    relabelled = Observations(
        labels=np.where(obs.labels >= 0, mapping[np.clip(obs.labels, 0, None)], obs.labels),
        valid=obs.valid,
        confidence=obs.confidence,
        hesitant=obs.hesitant,
    )
    for signal in LABEL_ONLY:
        _close(signal.batch(obs), signal.batch(relabelled))


# -- entropy ----------------------------------------------------------------------------------------


@RELAXED
@given(st.lists(st.integers(0, 6), min_size=1, max_size=15))
def test_entropy_in_unit_interval(labels: list[int]) -> None:
    value = EntropyCertainty()(Observations.single(labels)).value
    assert 0.0 <= value <= 1.0


@RELAXED
@given(st.integers(1, 20), st.integers(0, 9))
def test_entropy_unanimous_is_one(n: int, label: int) -> None:
    assert EntropyCertainty()(Observations.single([label] * n)).value == pytest.approx(1.0)


@RELAXED
@given(st.integers(2, 20))
def test_entropy_all_different_is_zero(n: int) -> None:
    assert EntropyCertainty()(Observations.single(list(range(n)))).value == pytest.approx(0.0, abs=1e-12)
    assert EntropyCertainty()(Observations.single([-1] * n)).value == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [([1, 1, 1, 1, 2], 0.689), ([3, 3, 3, 3, 3], 1.0), ([1, 1, 1, 2, 3], 0.41)],
)
def test_entropy_known_values(labels: list[int], expected: float) -> None:
    assert EntropyCertainty()(Observations.single(labels)).value == pytest.approx(expected, abs=0.005)


# -- Bayesian agreement (Adaptive-Consistency) ------------------------------------------------------


def _reference_posterior(labels: list[int], top_k: int | None = None) -> float:
    """Independent reference: P(G_leader > max G_rival) by Simpson's rule on a fine grid."""
    counts = Counter(x for x in labels if x >= 0)
    if not counts:
        return 0.0
    ordered = sorted(counts.values(), reverse=True)
    rivals = sorted(ordered[1:] + [1] * sum(1 for x in labels if x < 0), reverse=True) or [0]
    if top_k is not None:
        rivals = rivals[: top_k - 1]
    a = ordered[0] + 1
    x = np.linspace(0.0, a + 40.0 + 10 * math.sqrt(a), 20_001)
    density = stats.gamma.pdf(x, a) * np.prod([special.gammainc(c + 1, x) for c in rivals], axis=0)
    return float(integrate.simpson(density, x=x))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1, 4), min_size=1, max_size=12), st.sampled_from([None, 2, 3]))
def test_bayesian_matches_reference(labels: list[int], top_k: int | None) -> None:
    values = BayesianAgreement(top_k).batch(Observations.single(labels))[0]
    for n in range(1, len(labels) + 1):
        assert values[n - 1] == pytest.approx(_reference_posterior(labels[:n], top_k), abs=1e-7)


@RELAXED
@given(st.integers(1, 60), st.integers(0, 60))
def test_bayesian_two_classes_is_beta(a: int, b: int) -> None:
    value = BayesianAgreement()(Observations.single([0] * a + [1] * b)).value
    leader, rival = max(a, b), min(a, b)
    # P(p_leader > 1/2) under Beta(leader + 1, rival + 1)
    assert value == pytest.approx(1 - betainc(leader + 1, rival + 1, 0.5), abs=1e-10)


@RELAXED
@given(st.integers(0, 20), st.integers(1, 30))
def test_bayesian_grows_with_the_leaders_count(rival: int, leader: int) -> None:
    signal = BayesianAgreement()
    extra = [2, 3]  # other classes too, so the Dirichlet case is covered
    value = signal(Observations.single([0] * (rival + leader) + [1] * rival + extra)).value
    more = signal(Observations.single([0] * (rival + leader + 1) + [1] * rival + extra)).value
    assert more > value


def test_bayesian_known_values() -> None:
    signal = BayesianAgreement()
    # n unanimous answers: Beta(n + 1, 1) > 1/2 with probability 1 - 2^-(n+1) (Adaptive-Consistency)
    for n in range(1, 8):
        assert signal(Observations.single([7] * n)).value == pytest.approx(1 - 0.5 ** (n + 1))
    assert adaptive_consistency(0.95)(Observations.single([7] * 4))
    assert not adaptive_consistency(0.95)(Observations.single([7] * 3))
    # ties: by symmetry 1 / classes
    assert signal(Observations.single([0, 1, 2, 3])).value == pytest.approx(0.25, abs=1e-9)
    assert signal(Observations.single([0, 0, 1, 1, 2, 2])).value == pytest.approx(1 / 3, abs=1e-9)
    # missing answers never win and count against the leader
    assert signal(Observations.single([-1, -1, -1])).value == 0.0
    with_missing = signal(Observations.single([5, 5, 5, -1, -1])).value
    assert with_missing < signal(Observations.single([5, 5, 5])).value
    assert with_missing == pytest.approx(signal(Observations.single([5, 5, 5, 8, 9])).value)
    # top_k = 2 keeps only the strongest rival
    assert BayesianAgreement(2)(Observations.single([0, 0, 0, 1, 2, 3])).value == pytest.approx(
        1 - betainc(4, 2, 0.5)
    )


def test_bayesian_is_deterministic_on_large_batches() -> None:
    obs = _random_obs(3000, 20, seed=3)
    first, second = BayesianAgreement().batch(obs), BayesianAgreement().batch(obs)
    np.testing.assert_array_equal(first, second)


# -- window agreement (ESC) and probe consistency (Dynasor-CoT) -------------------------------------


def _reference_window(labels: list[int], hesitant: list[bool], window: int, skip_hesitant: bool) -> list[int]:
    """Matches with the newest usable answer in the last ``window`` observations, after each one."""
    out = []
    for n in range(1, len(labels) + 1):
        last = list(zip(labels[max(0, n - window) : n], hesitant[max(0, n - window) : n], strict=True))
        usable = [x for x, h in last if x >= 0 and not (skip_hesitant and h)]
        out.append(sum(1 for x in usable if x == usable[-1]) if usable else 0)
    return out


@RELAXED
@given(
    st.lists(st.tuples(st.integers(-1, 2), st.booleans()), min_size=1, max_size=14),
    st.integers(1, 6),
)
def test_window_signals_match_reference(probes: list[tuple[int, bool]], window: int) -> None:
    labels, hesitant = [p[0] for p in probes], [p[1] for p in probes]
    obs = Observations.single(labels, hesitant=hesitant)
    plain = np.array(_reference_window(labels, hesitant, window, skip_hesitant=False))
    confident = np.array(_reference_window(labels, hesitant, window, skip_hesitant=True))
    _close(WindowAgreement(window).batch(obs)[0], (plain == window).astype(float))
    _close(WindowAgreement(window, fraction=True).batch(obs)[0], plain / window)
    _close(ProbeConsistency(window).batch(obs)[0], confident / window)
    # Dynasor-CoT's stop condition: the last `window` probes all confident, answered and identical
    for n in range(1, len(labels) + 1):
        tail = probes[max(0, n - window) : n]
        dynasor = (
            len(tail) == window and all(x >= 0 and not h for x, h in tail) and len({x for x, _ in tail}) == 1
        )
        assert (ProbeConsistency(window).batch(obs)[0, n - 1] == 1.0) == dynasor


def test_probe_consistency_hesitation() -> None:
    signal = ProbeConsistency(3)
    calm = Observations.single([4, 4, 4])
    assert signal(calm).value == 1.0 and signal(calm).support == 3
    hesitating = Observations.single([4, 4, 4], hesitant=[False, True, False])
    assert signal(hesitating).value == pytest.approx(2 / 3)
    assert signal(hesitating).support == 2
    # the newest probe hesitates: agreement is judged against the newest confident one
    newest = Observations.single([4, 4, 9], hesitant=[False, False, True])
    assert signal(newest).value == pytest.approx(2 / 3)
    # once hesitation leaves the window, full agreement returns
    later = Observations.single([4, 4, 4, 4, 4], hesitant=[False, True, False, False, False])
    np.testing.assert_allclose(signal.batch(later)[0], [1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0])
    assert signal.support(later)[0].tolist() == [1, 1, 2, 2, 3]
    assert probe_consistency_at_least(1.0, window=3)(later)
    assert not probe_consistency_at_least(1.0, window=3)(hesitating)


def test_esc_fires_only_on_full_unanimous_windows() -> None:
    rule = esc(5)
    mixed = Observations.single([1, 2, 3, 4, 5, 7, 7, 7, 7, 7, 7])
    assert np.flatnonzero(rule.batch(mixed)[0]).tolist() == [9]
    assert np.flatnonzero(rule.batch(Observations.single([3] * 12))[0]).tolist() == [4, 9]
    # unanimous, but not aligned with a window of the schedule: ESC does not stop at 6
    shifted = Observations.single([2, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert np.flatnonzero(rule.batch(shifted)[0]).tolist() == [9]
    # a missing answer breaks the window
    assert not rule.batch(Observations.single([1, 1, -1, 1, 1]))[0].any()
    assert WindowAgreement(5).support(Observations.single([1] * 7))[0].tolist() == [1, 2, 3, 4, 5, 5, 5]


# -- reward, confidence, mean logprob, output length ------------------------------------------------


def test_reward_certainty_known_values() -> None:
    obs = Observations.single([1, 2, 2, -1], rewards=[None, 0.0, 2.0, -2.0])
    sig = 1 / (1 + np.exp(-2.0))
    _close(RewardCertainty().batch(obs)[0], np.array([np.nan, 0.5, (0.5 + sig) / 2, 0.5]))
    _close(RewardCertainty("max").batch(obs)[0], np.array([np.nan, 0.5, sig, sig]))
    _close(RewardCertainty("min", bounds=(-4, 6)).batch(obs)[0], np.array([np.nan, 0.4, 0.4, 0.2]))
    _close(RewardCertainty("min", answered_only=True).batch(obs)[0], np.array([np.nan, 0.5, 0.5, 0.5]))
    assert RewardCertainty().support(obs)[0].tolist() == [0, 1, 2, 3]
    # offset/scale: 0.5 at the offset; bounds clip
    assert RewardCertainty(offset=3.0)(Observations.single([1], rewards=[3.0])).value == 0.5
    assert RewardCertainty(scale=10.0)(Observations.single([1], rewards=[10.0])).value == pytest.approx(
        1 / (1 + math.exp(-1.0))
    )
    assert RewardCertainty(bounds=(-4, 6))(Observations.single([1], rewards=[9.0])).value == 1.0
    with pytest.raises(ValueError, match="aggregate"):
        RewardCertainty("median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bounds"):
        RewardCertainty(bounds=(1, 1))


def test_reward_threshold_rule() -> None:
    obs = Observations.single([1, 1, 1], rewards=[-3.0, 5.0, 0.0])
    assert np.flatnonzero(reward_at_least(0.9, "max").batch(obs)[0]).tolist() == [1, 2]
    assert not reward_at_least(0.9).batch(obs)[0].any()


def test_confidence_certainty_known_values() -> None:
    obs = Observations.single([1, 2, 2, -1], confidence=[3.0, 1.0, 1.0, 1.0])
    _close(ConfidenceCertainty().batch(obs)[0], np.array([1.0, 0.75, 0.6, 0.5]))
    # filtered below 2.0: only the first observation votes
    _close(ConfidenceCertainty(2.0).batch(obs)[0], np.array([1.0, 1.0, 1.0, 1.0]))
    assert ConfidenceCertainty(2.0).support(obs)[0].tolist() == [1, 1, 1, 1]
    # exp transform for mean logprobs
    logprob = Observations.single([1, 2], confidence=[math.log(0.9), math.log(0.3)])
    assert ConfidenceCertainty(transform="exp")(logprob).value == pytest.approx(0.9 / 1.2)
    # undefined until some confidence counts
    _close(
        ConfidenceCertainty().batch(Observations.single([1, 1], confidence=[None, 0.0]))[0],
        np.full(2, np.nan),
    )
    assert confidence_at_least(0.95)(Observations.single([4, 4, 4], confidence=[5.0, 6.0, 7.0]))


def test_mean_logprob_and_length_known_values() -> None:
    obs = Observations.single([1, 2, 2, -1], confidence=[-0.1, -0.5, None, 0.2], tokens=[0, 1000, 3000, 0])
    expected = np.cumsum([math.exp(-0.1), math.exp(-0.5), 0.0, 1.0]) / np.array([1, 2, 2, 3])
    _close(MeanLogprobCertainty().batch(obs)[0], expected)
    _close(
        MeanLogprobCertainty("min").batch(obs)[0],
        np.array([math.exp(-0.1), math.exp(-0.5), math.exp(-0.5), math.exp(-0.5)]),
    )
    _close(OutputLengthCertainty().batch(obs)[0], np.array([np.nan, 0.5, 1 / 3, 1 / 3]))
    assert OutputLengthCertainty().support(obs)[0].tolist() == [0, 1, 2, 2]
    shorter = OutputLengthCertainty()(Observations.single([1], tokens=[100])).value
    assert shorter > OutputLengthCertainty()(Observations.single([1], tokens=[200])).value


# -- JSON round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS, ids=repr)
def test_signal_json_round_trip(signal: Signal) -> None:
    loaded = signal_from_dict(json.loads(json.dumps(signal_to_dict(signal))))
    assert type(loaded) is type(signal) and loaded.params() == signal.params()
    obs = _random_obs(50, 12, seed=1)
    np.testing.assert_array_equal(loaded.batch(obs), signal.batch(obs))


RULES: list[Callable[[], StopRule]] = [
    lambda: reward_at_least(0.8, "max", bounds=(-4, 6), every=2),
    lambda: reward_at_least(0.6, scale=2.0, offset=1.0, answered_only=True, at=[3, 6]),
    lambda: probe_consistency_at_least(1.0, window=3),
    lambda: probe_consistency_at_least(0.6, window=5, min_obs=3),
    lambda: adaptive_consistency(0.95),
    lambda: adaptive_consistency(0.8, top_k=5, at=[4, 8]),
    lambda: esc(5),
    lambda: confidence_at_least(0.9, min_confidence=1.0, transform="exp", every=4),
    lambda: esc(3) | (adaptive_consistency(0.9) & reward_at_least(0.5)),
]


@pytest.mark.parametrize("make", RULES)
def test_rule_json_round_trip(make: Callable[[], StopRule]) -> None:
    rule = make()
    loaded = rule_from_dict(json.loads(json.dumps(rule.to_dict())))
    assert loaded.to_dict() == rule.to_dict()
    obs = _random_obs(200, 16, seed=2)
    np.testing.assert_array_equal(loaded.batch(obs), rule.batch(obs))


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        WindowAgreement(0)
    with pytest.raises(ValueError):
        ProbeConsistency(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        BayesianAgreement(1)
    with pytest.raises(ValueError):
        ConfidenceCertainty(transform="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OutputLengthCertainty(0)


# -- hesitation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wait, let me re-check.", True),
        ("WAIT", True),
        ("hmm... 42", True),
        ("Hold on.", True),
        ("No.", True),
        ("Okay, the answer is 12", True),
        ("12}\n\\]\nBut the units", True),
        ("let   me\nre-check this", True),
        ("Alternatively, 7", True),
        ("Now the answer is 5", False),  # "now" is not "no"
        ("the threshold on x is 3", False),  # "threshold" is not "hold"
        ("nothing else", False),
        ("butter and a rebuttal", False),
        ("awaiting 5", False),
        ("42}", False),
        ("", False),
    ],
)
def test_is_hesitant_default_words(text: str, expected: bool) -> None:
    assert is_hesitant(text) is expected


def test_is_hesitant_custom_words() -> None:
    assert is_hesitant("maybe 5", words=["maybe"])
    assert not is_hesitant("wait", words=["maybe"])
    assert not is_hesitant("wait", words=[])
    assert is_hesitant("Let me VERIFY", words=("let me verify",))
    assert "wait" in DEFAULT_HESITATION_WORDS and "hold on" in DEFAULT_HESITATION_WORDS


# -- DeepConf and logprob features ------------------------------------------------------------------


def test_deepconf_features_known_values() -> None:
    _close(token_confidence([[-0.1, -2.0, -3.0], [-0.5, -1.0, -1.5]]), np.array([1.7, 1.0]))
    _close(token_confidence([[-1.0, -3.0], [-2.0]]), np.array([2.0, 2.0]))  # ragged top-k
    assert token_confidence([]).shape == (0,)
    conf = [1.0, 2.0, 3.0, 4.0]
    _close(group_confidence(conf, window=2), np.array([1.5, 2.5, 3.5]))
    _close(group_confidence(conf, window=10), np.array([2.5]))  # shorter than the window: one group
    assert lowest_group_confidence(conf, window=2) == pytest.approx(1.5)
    assert bottom_group_confidence(conf, window=2) == pytest.approx(1.5)  # max(1, floor(0.3)) groups
    ramp = np.arange(21, dtype=float)  # 20 groups of 2: the lowest 2 are 0.5 and 1.5
    assert bottom_group_confidence(ramp, window=2, fraction=0.1) == pytest.approx(1.0)
    assert tail_confidence(conf, tail=2) == pytest.approx(3.5)
    assert tail_confidence(conf, tail=10) == pytest.approx(2.5)
    assert math.isnan(lowest_group_confidence([])) and math.isnan(tail_confidence([]))
    assert mean_logprob([-1.0, -3.0]) == pytest.approx(-2.0)
    assert lowest_window_mean_logprob([-0.1, -2.0, -0.1, -0.1], window=2) == pytest.approx(-1.05)
    assert math.isnan(mean_logprob([])) and math.isnan(lowest_window_mean_logprob([]))
    assert reduce_step_rewards([0.9, 0.2, 0.7]) == 0.2
    assert reduce_step_rewards([0.9, 0.2, 0.7], how="last") == 0.7
    assert math.isnan(reduce_step_rewards([]))
    with pytest.raises(ValueError):
        reduce_step_rewards([1.0], how="mean")  # type: ignore[arg-type]


def _load(name: str) -> list[dict[str, Any]]:
    path = TRACES / name
    if not path.exists():
        pytest.skip(f"recorded traces not found at {path} (../shared/data is absent)")
    with path.open() as f:
        return [json.loads(line) for line in f]


def _is_correct(answer: str | None, gold: str) -> bool:
    try:
        return answer is not None and float(answer) == float(gold)
    except ValueError:
        return False


def test_logprob_features_on_real_traces() -> None:
    """Qwen2.5-Coder-0.5B on GSM8K (8 questions x 8 samples, chosen-token logprobs only).

    Seen on this file: 8 of 64 samples are correct; their mean logprob averages -0.154 against
    -0.183 for wrong ones, and their lowest 64-token window mean logprob -0.268 against -0.355.
    The gap is small and rests on few correct samples, but it holds for both features.
    """
    rows = _load("gsm8k-qwen25coder05b-sc8-logprobs.jsonl")
    by_correct: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    labels, confidence, tokens = [], [], []
    for row in rows:
        answers: dict[str, int] = {}
        for sample in row["samples"]:
            lp = sample["token_logprobs"]
            assert len(lp) == sample["num_tokens"]
            features = (mean_logprob(lp), lowest_window_mean_logprob(lp, window=64))
            assert features[1] <= features[0] <= 0.0
            # a window longer than the sequence is the whole sequence
            assert lowest_window_mean_logprob(lp) == pytest.approx(features[0])
            by_correct[_is_correct(sample["answer"], row["gold"])].append(features)
        labels.append(
            [answers.setdefault(s["answer"], len(answers)) if s["answer"] else -1 for s in row["samples"]]
        )
        confidence.append([mean_logprob(s["token_logprobs"]) for s in row["samples"]])
        tokens.append([s["num_tokens"] for s in row["samples"]])
    correct, wrong = np.array(by_correct[True]), np.array(by_correct[False])
    assert len(correct) > 0 and len(wrong) > 0
    assert correct[:, 0].mean() > wrong[:, 0].mean()
    assert correct[:, 1].mean() > wrong[:, 1].mean()
    # the signals run on them: one row per question
    obs = Observations(
        labels=np.array(labels),
        valid=np.ones((len(rows), 8), dtype=bool),
        confidence=np.array(confidence),
        tokens=np.array(tokens),
    )
    for signal in (MeanLogprobCertainty(), ConfidenceCertainty(transform="exp"), OutputLengthCertainty(300)):
        values = signal.batch(obs)
        assert ((values > 0) & (values <= 1)).all()


def test_reward_certainty_on_real_rewards() -> None:
    """Qwen2.5-Math-7B on MATH with its outcome reward model (50 x 8): correct samples score higher."""
    rows = _load("math-qwen25math-sc8.jsonl")
    rewards = np.array([[s["reward"] for s in row["samples"]] for row in rows], dtype=float)
    correct = np.array([[bool(s["correct"]) for s in row["samples"]] for row in rows])
    assert -5 < rewards.min() < -3 and 5 < rewards.max() < 7
    for signal in (RewardCertainty(), RewardCertainty(bounds=(-4, 6))):
        per_sample = signal.normalise(rewards)
        assert ((per_sample >= 0) & (per_sample <= 1)).all()
        assert per_sample[correct].mean() > per_sample[~correct].mean() + 0.3
    obs = Observations(
        labels=np.zeros(rewards.shape, dtype=np.int64), valid=np.ones(rewards.shape, bool), rewards=rewards
    )
    final = RewardCertainty().batch(obs)[:, -1]
    majority_right = correct.mean(axis=1) > 0.5
    assert final[majority_right].mean() > final[~majority_right].mean()
