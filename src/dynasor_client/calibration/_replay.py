"""Replaying recorded samples in many random orders, and what a stop rule costs and scores there.

A :class:`LabelledTraces` holds Q questions as ``[Q, N]`` arrays (answer class labels, tokens,
rewards, confidences) plus which answer classes are correct. A :class:`Replay` shuffles each
question's samples into R fixed random orders and lays them out as one :class:`Observations` of
``Q * R`` rows (row ``q * R + r`` is order r of question q) and ``cap`` columns, with everything a
rule's outcome needs precomputed per prefix: the majority answer, whether it is correct, the tokens
spent. Evaluating a rule is then one ``rule.batch`` call plus array lookups.

**Orders are paired:** order r of a question is a permutation drawn from a generator seeded with
``(seed, sha256(question id))``, so it is the same for every rule evaluated, in every split and
subset of questions — comparisons between rules are paired.

Definitions used by :func:`evaluate`:

- *Answer* at a stop: the majority class of the observations so far; missing answers never win; a tie
  goes to the class that reached the count first. *Correct* if that class is correct (for recorded
  ``correct`` flags: the majority of its members' flags).
- *Tokens*: generated tokens (``num_tokens``) of the observations used, per question. Prompt tokens
  are not counted (they do not depend on the rule when the prompt is cached; ``prompt_tokens`` per
  sample is reported separately in :attr:`Evaluation.prompt_tokens`).
- *Rounds*: sequential rounds — the checkpoints a program consults, where a checkpoint is an
  observation count at which the rule may fire
  (:func:`~dynasor_client.certainty.rules.checkpoint_mask`); the final observation always counts.
  A rule checked at counts 5, 10 and 30 that stops at 10 took 2 rounds; one checked
  after every observation that stops at 7 took 7. A program skips a checkpoint at which its rule
  cannot fire whatever the samples still to come (``StopRule.may_fire``), so it takes fewer:
  :func:`consulted_rounds`. The calibration search bounds the planned checkpoints
  (:meth:`Replay.rounds_at`), which are at least as many.
- *accuracy_ci95*: the 2.5th-97.5th percentile of the per-order accuracies (the spread of one run's
  accuracy over these questions); *accuracy_ci95_questions*: a normal-approximation 95% interval over
  questions (per-question accuracy averaged over orders), which is what matters for new questions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..certainty import NONE, BoolArray, FloatArray, IntArray, Observations, StopRule
from ..certainty.rules import checkpoints, first_stop
from ._traces import ClusterFn, EquivalentFn, TraceQuestion, default_cluster, equivalence_from_cluster


@dataclass(frozen=True, eq=False)
class LabelledTraces:
    """Q questions' samples as ``[Q, N]`` arrays (N = most samples of any question; padding is absent).

    ``labels`` are answer classes 0..C-1 per question (``NONE`` for a missing answer or padding),
    ``class_correct[q, c]`` says whether class c of question q is a correct answer.
    """

    ids: tuple[str, ...]
    labels: IntArray
    present: BoolArray
    class_correct: BoolArray
    tokens: IntArray
    rewards: FloatArray
    confidence: FloatArray
    prompt_tokens: IntArray
    source: str = ""

    @property
    def questions(self) -> int:
        return len(self.ids)

    @property
    def max_samples(self) -> int:
        return int(self.labels.shape[1])

    def subset(self, index: Sequence[int] | IntArray) -> LabelledTraces:
        idx = np.asarray(index, dtype=np.int64)
        return LabelledTraces(
            ids=tuple(self.ids[i] for i in idx),
            labels=self.labels[idx],
            present=self.present[idx],
            class_correct=self.class_correct[idx],
            tokens=self.tokens[idx],
            rewards=self.rewards[idx],
            confidence=self.confidence[idx],
            prompt_tokens=self.prompt_tokens[idx],
            source=self.source,
        )

    @classmethod
    def synthetic(cls, questions: int = 1000, samples: int = 30, seed: int = 0) -> LabelledTraces:
        """Random questions shaped like SVAMP (for benchmarks): a dominant answer of varying strength."""
        rng = np.random.default_rng(seed)
        strength = rng.beta(2.0, 0.6, size=questions)
        n_wrong = rng.integers(1, 8, size=questions)
        u = rng.random((questions, samples))
        wrong = 1 + (rng.random((questions, samples)) * n_wrong[:, None]).astype(np.int64)
        labels = np.where(u < strength[:, None], 0, wrong)
        labels = np.where(rng.random((questions, samples)) < 0.01, NONE, labels)
        correct = np.zeros((questions, 9), dtype=bool)
        correct[:, 0] = rng.random(questions) < 0.9
        return cls(
            ids=tuple(f"synthetic-{i}" for i in range(questions)),
            labels=labels.astype(np.int64),
            present=np.ones((questions, samples), dtype=bool),
            class_correct=correct,
            tokens=rng.integers(30, 120, size=(questions, samples)).astype(np.int64),
            rewards=np.full((questions, samples), np.nan),
            confidence=np.full((questions, samples), np.nan),
            prompt_tokens=np.zeros(questions, dtype=np.int64),
            source="synthetic",
        )


def _mean_logprob(logprobs: Sequence[float]) -> float:
    return float(np.mean(logprobs)) if len(logprobs) else float("nan")


def label_traces(
    questions: Sequence[TraceQuestion],
    *,
    cluster: ClusterFn | None = None,
    equivalent: EquivalentFn | None = None,
    confidence: Callable[[Sequence[float]], float] = _mean_logprob,
    source: str = "",
) -> LabelledTraces:
    """Label each question's answers (``cluster``) and grade them, into :class:`LabelledTraces`.

    ``cluster`` defaults to ``answers.cluster_answers`` (or exact match on stripped strings when that
    module is absent). A sample is correct by its recorded ``correct`` flag when present, else when
    ``equivalent(answer, gold)`` (default: the labeller puts both in one class). A class is correct
    when most of its members are (ties: its first member). ``confidence`` maps a sample's token
    logprobs to its confidence feature (default: the mean logprob).
    """
    questions = [q for q in questions if q.samples]
    if not questions:
        raise ValueError("no questions with samples")
    cluster = cluster or default_cluster()
    equivalent = equivalent or equivalence_from_cluster(cluster)
    q_n, n_max = len(questions), max(len(q.samples) for q in questions)
    labels = np.full((q_n, n_max), NONE, dtype=np.int64)
    present = np.zeros((q_n, n_max), dtype=bool)
    tokens = np.zeros((q_n, n_max), dtype=np.int64)
    rewards = np.full((q_n, n_max), np.nan)
    conf = np.full((q_n, n_max), np.nan)
    class_rows: list[list[bool]] = []
    for i, q in enumerate(questions):
        n = len(q.samples)
        raw = cluster([s.answer for s in q.samples])
        if len(raw) != n:
            raise ValueError(f"labeller returned {len(raw)} labels for {n} answers")
        remap: dict[int, int] = {}
        row = [NONE if lab < 0 else remap.setdefault(lab, len(remap)) for lab in raw]
        labels[i, :n] = row
        present[i, :n] = True
        graded: dict[str, bool] = {}
        votes: list[list[bool]] = [[] for _ in remap]
        for j, s in enumerate(q.samples):
            tokens[i, j] = s.num_tokens
            if s.reward is not None:
                rewards[i, j] = s.reward
            if s.token_logprobs is not None:
                conf[i, j] = confidence(s.token_logprobs)
            if row[j] < 0 or s.answer is None:
                continue
            if s.correct is not None:
                ok = s.correct
            else:
                if s.answer not in graded:
                    graded[s.answer] = bool(equivalent(s.answer, q.gold))
                ok = graded[s.answer]
            votes[row[j]].append(ok)
        class_rows.append([sum(v) * 2 > len(v) or (sum(v) * 2 == len(v) and v[0]) for v in votes])
    n_classes = max(1, max(len(r) for r in class_rows))
    class_correct = np.zeros((q_n, n_classes), dtype=bool)
    for i, r in enumerate(class_rows):
        class_correct[i, : len(r)] = r
    return LabelledTraces(
        ids=tuple(q.id for q in questions),
        labels=labels,
        present=present,
        class_correct=class_correct,
        tokens=tokens,
        rewards=rewards,
        confidence=conf,
        prompt_tokens=np.array([q.prompt_tokens or 0 for q in questions], dtype=np.int64),
        source=source,
    )


def _id_seed(question_id: str) -> int:
    return int.from_bytes(hashlib.sha256(question_id.encode("utf-8")).digest()[:8], "big")


def sample_orders(ids: Sequence[str], present: BoolArray, orders: int, seed: int) -> IntArray:
    """``[Q, R, N]`` permutations: order r of question q shuffles its present samples to the front.

    Seeded by ``(seed, sha256(id))`` per question, so a question's orders do not depend on which
    other questions are replayed with it.
    """
    q_n, n_max = present.shape
    out = np.empty((q_n, orders, n_max), dtype=np.int64)
    for i, qid in enumerate(ids):
        keys = np.random.default_rng([seed, _id_seed(qid)]).random((orders, n_max))
        keys[:, ~present[i]] = np.inf
        out[i] = np.argsort(keys, axis=1, kind="stable")
    return out


def prefix_majority(labels: IntArray, valid: BoolArray) -> IntArray:
    """Majority class after each prefix, ``[B, K]`` (``NONE`` while no answer): missing answers never
    win; a tie goes to the class that reached the count first. Labels must be small ints per row."""
    b, k = labels.shape
    n_classes = int(labels.max(initial=0)) + 1
    counts = np.zeros((b, n_classes), dtype=np.int32)
    leader = np.full(b, NONE, dtype=np.int64)
    lead = np.zeros(b, dtype=np.int32)
    out = np.empty((b, k), dtype=np.int64)
    rows = np.arange(b)
    for j in range(k):
        lab = labels[:, j]
        live = valid[:, j] & (lab >= 0)
        r, c = rows[live], lab[live]
        counts[r, c] += 1
        now = counts[r, c]
        better = now > lead[r]
        leader[r[better]] = c[better]
        lead[r[better]] = now[better]
        out[:, j] = leader
    return out


def _pair(values: Sequence[float]) -> tuple[float, float]:
    return float(values[0]), float(values[1])


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What a rule scores and costs on replayed traces (see the module docs for definitions)."""

    accuracy: float
    accuracy_ci95: tuple[float, float]
    accuracy_ci95_questions: tuple[float, float]
    tokens: float
    samples: float
    rounds: float
    saved: float
    full_tokens: float
    prompt_tokens: float
    questions: int
    orders: int
    cap: int
    accuracy_per_order: tuple[float, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_ci95": list(self.accuracy_ci95),
            "accuracy_ci95_questions": list(self.accuracy_ci95_questions),
            "tokens": self.tokens,
            "samples": self.samples,
            "rounds": self.rounds,
            "saved": self.saved,
            "full_tokens": self.full_tokens,
            "prompt_tokens": self.prompt_tokens,
            "questions": self.questions,
            "orders": self.orders,
            "cap": self.cap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(
            accuracy=float(data["accuracy"]),
            accuracy_ci95=_pair(data["accuracy_ci95"]),
            accuracy_ci95_questions=_pair(data.get("accuracy_ci95_questions", data["accuracy_ci95"])),
            tokens=float(data["tokens"]),
            samples=float(data["samples"]),
            rounds=float(data["rounds"]),
            saved=float(data["saved"]),
            full_tokens=float(data["full_tokens"]),
            prompt_tokens=float(data.get("prompt_tokens", 0.0)),
            questions=int(data["questions"]),
            orders=int(data["orders"]),
            cap=int(data["cap"]),
        )


@dataclass(frozen=True, slots=True)
class Score:
    """The mean figures of a rule on some rows (what the search ranks by; :class:`Evaluation` has more)."""

    accuracy: float
    tokens: float
    samples: float
    rounds: float
    saved: float
    #: standard error (over questions) of the paired accuracy difference with the full budget
    difference_se: float = 0.0


class Replay:
    """Q questions x R orders replayed as one ``[Q * R, cap]`` :class:`Observations` (module docs)."""

    def __init__(self, data: LabelledTraces, *, orders: int = 20, cap: int = 30, seed: int = 0) -> None:
        if orders < 1 or cap < 1:
            raise ValueError("orders and cap must be >= 1")
        self.data, self.orders, self.seed = data, orders, seed
        self.cap = cap = min(cap, data.max_samples)
        perm = sample_orders(data.ids, data.present, orders, seed)[:, :, :cap]
        q_n = data.questions
        self.question = np.repeat(np.arange(q_n), orders)
        self.order = np.tile(np.arange(orders), q_n)
        idx = perm.reshape(q_n * orders, cap)
        qi = self.question[:, None]
        valid = data.present[qi, idx]
        labels = np.where(valid, data.labels[qi, idx], NONE)
        tokens = np.where(valid, data.tokens[qi, idx], 0)
        self.obs = Observations(
            labels=labels,
            valid=valid,
            rewards=data.rewards[qi, idx],
            tokens=tokens,
            confidence=data.confidence[qi, idx],
        )
        self.counts = self.obs.counts
        self.winner = prefix_majority(labels, valid)
        has = self.winner >= 0
        self.correct = has & data.class_correct[qi, np.where(has, self.winner, 0)]
        self.spent = np.cumsum(tokens, axis=1)
        self.last = first_stop(np.zeros_like(valid), valid)
        self.rows = len(self.question)
        rows = np.arange(self.rows)
        #: whether the majority after each prefix is the full-budget answer (same order)
        self.agree = self.winner == self.winner[rows, self.last][:, None]
        self.full_tokens = float(self.spent[rows, self.last].mean())
        self.samples_per_row = self.counts[rows, self.last]
        self._prompt = data.prompt_tokens[self.question].astype(np.float64)

    def summarise(self, stop: IntArray, rounds: IntArray, rows: IntArray | None = None) -> Evaluation:
        """Score per-row stop positions (and rounds) over all rows or a subset of whole questions."""
        if rows is None:
            rows = np.arange(self.rows)
        correct = self.correct[rows, stop].astype(np.float64)
        tokens = self.spent[rows, stop].astype(np.float64)
        samples = self.counts[rows, stop].astype(np.float64)
        full = float(self.spent[rows, self.last[rows]].mean())
        per_order = correct.reshape(-1, self.orders).mean(axis=0)
        per_question = correct.reshape(-1, self.orders).mean(axis=1)
        acc = float(correct.mean())
        half = (
            1.96 * float(per_question.std(ddof=1)) / np.sqrt(len(per_question))
            if len(per_question) > 1
            else 0.0
        )
        return Evaluation(
            accuracy=acc,
            accuracy_ci95=(float(np.percentile(per_order, 2.5)), float(np.percentile(per_order, 97.5))),
            accuracy_ci95_questions=(float(acc - half), float(acc + half)),
            tokens=float(tokens.mean()),
            samples=float(samples.mean()),
            rounds=float(np.asarray(rounds, dtype=np.float64).mean()),
            saved=1.0 - float(tokens.mean()) / full if full > 0 else 0.0,
            full_tokens=full,
            prompt_tokens=float((self._prompt[rows] * samples).mean()),
            questions=len(per_question),
            orders=self.orders,
            cap=self.cap,
            accuracy_per_order=tuple(float(x) for x in per_order),
        )

    def score(self, stop: IntArray, rounds: IntArray, rows: IntArray | None = None) -> Score:
        """Mean accuracy, tokens, samples, rounds and saved fraction (fast; for the search)."""
        if rows is None:
            rows = np.arange(self.rows)
        tokens = float(self.spent[rows, stop].mean())
        full = float(self.spent[rows, self.last[rows]].mean())
        correct = self.correct[rows, stop]
        diff = (correct.astype(np.float64) - self.correct[rows, self.last[rows]]).reshape(-1, self.orders)
        per_question = diff.mean(axis=1)
        se = float(per_question.std(ddof=1)) / np.sqrt(len(per_question)) if len(per_question) > 1 else 0.0
        return Score(
            accuracy=float(correct.mean()),
            tokens=tokens,
            samples=float(self.counts[rows, stop].mean()),
            rounds=float(np.mean(rounds)),
            saved=1.0 - tokens / full if full > 0 else 0.0,
            difference_se=float(se),
        )

    def paired_loss(self, stop: IntArray, rows: IntArray | None = None) -> FloatArray:
        """Per question (of ``rows``, whole questions): the full budget's correctness minus the
        stops', averaged over orders (positive: accuracy lost)."""
        if rows is None:
            rows = np.arange(self.rows)
        lost = self.correct[rows, self.last[rows]].astype(np.float64) - self.correct[rows, stop]
        return np.asarray(lost.reshape(-1, self.orders).mean(axis=1), dtype=np.float64)

    def rounds_at(self, check: BoolArray, stop: IntArray) -> IntArray:
        """Rounds per row: checkpoints up to and including the stop (which always counts)."""
        rows = np.arange(len(stop))
        before = np.cumsum(check, axis=1)[rows, stop]
        return np.asarray(before + ~check[rows, stop], dtype=np.int64)

    def baseline(self) -> Evaluation:
        """The full budget: every row uses all its (up to ``cap``) samples; one round."""
        return self.summarise(self.last, np.ones(self.rows, dtype=np.int64))

    def stops(self, rule: StopRule) -> IntArray:
        return first_stop(rule.batch(self.obs) & self.obs.valid, self.obs.valid)

    def evaluate(self, rule: StopRule) -> Evaluation:
        stop = self.stops(rule)
        return self.summarise(stop, consulted_rounds(rule, self.obs, stop))


def evaluate(
    rule: StopRule,
    data: Replay | LabelledTraces | Sequence[TraceQuestion],
    *,
    orders: int = 20,
    cap: int = 30,
    seed: int = 0,
) -> Evaluation:
    """Accuracy, tokens and rounds of ``rule`` replayed over ``orders`` random sample orders.

    ``data`` may be a :class:`Replay` (then ``orders``, ``cap`` and ``seed`` are its own), labelled
    traces, or trace questions (labelled with the default labeller). Build a :class:`Replay` once to
    evaluate many rules on the same orders.
    """
    if not isinstance(data, Replay):
        labelled = data if isinstance(data, LabelledTraces) else label_traces(data)
        data = Replay(labelled, orders=orders, cap=cap, seed=seed)
    return data.evaluate(rule)


# -- rounds: the checkpoints a program consults --------------------------------------------------------


def consulted_rounds(rule: StopRule, obs: Observations, stop: IntArray) -> IntArray:
    """Rounds per row of a program running ``rule`` that stops at position ``stop[b]``: one per
    checkpoint it consults. From each consulted checkpoint it goes on to the next one at which the
    rule may fire given the observations so far (``rule.may_fire``), drawing the checkpoints in
    between in the same round, as :class:`~dynasor_client.algorithms.RoundPlan` does."""
    b = obs.shape[0]
    rows = np.arange(b)
    counts = obs.counts
    stop_count = counts[rows, stop]
    ends = checkpoints(rule, max(int(stop_count.max(initial=1)), 1))
    position = np.zeros(b, dtype=np.int64)  # observations held at the last consulted checkpoint
    rounds = np.zeros(b, dtype=np.int64)
    active = np.ones(b, dtype=bool)
    while active.any():
        target = np.where(active, -1, 0)
        for end in ends:
            open_ = np.flatnonzero((target < 0) & (end > position))
            if open_.size == 0:
                continue
            last = end >= stop_count[open_]  # the stop (or the last observation) is always consulted
            ask = open_[~last]
            if ask.size:
                prefix = obs.valid[ask] & (counts[ask] <= position[ask, None])
                held = Observations(labels=obs.labels[ask], valid=prefix, rewards=obs.rewards[ask],
                                    tokens=obs.tokens[ask], confidence=obs.confidence[ask],
                                    hesitant=obs.hesitant[ask])  # fmt: skip
                last[~last] = rule.may_fire(held, end)
            target[open_[last]] = end
        rounds += active
        position = np.where(active, target, position)
        active &= position < stop_count
    return rounds
