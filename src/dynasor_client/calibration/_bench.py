"""Speed of the certaindex hot paths (``dynasor-client bench certaindex``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..certainty import StaticThreshold
from ._replay import LabelledTraces, Replay, label_traces
from ._traces import default_cluster, exact_cluster, load_traces


def _best_of(fn: Callable[[], Any], repeat: int, number: int = 1) -> float:
    """Best wall time of ``number`` calls, over ``repeat`` tries, per call (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def bench_certaindex(
    *,
    traces: str | Path | None = None,
    questions: int = 1000,
    samples: int = 30,
    orders: int = 20,
    repeat: int = 3,
) -> dict[str, Any]:
    """Time clustering 32 plain-number answers and evaluating one rule over questions x samples x orders.

    Questions are synthetic (SVAMP-like answer distributions) unless ``traces`` is given, in which case
    its questions are used (repeated up to ``questions``).
    """
    rng = np.random.default_rng(0)
    answers: list[str | None] = [str(int(x)) for x in rng.choice([42, 41, 7, 1000, 3], size=32)]
    cluster = default_cluster()
    cluster_s = _best_of(lambda: cluster(answers), repeat=5, number=200)
    exact_s = _best_of(lambda: exact_cluster(answers), repeat=5, number=200)

    if traces is not None:
        labelled = label_traces(load_traces(traces), source=Path(traces).name)
        reps = -(-questions // labelled.questions)
        idx = np.tile(np.arange(labelled.questions), reps)[:questions]
        data = labelled.subset(idx)
        data = LabelledTraces(
            ids=tuple(f"{qid}#{i}" for i, qid in enumerate(data.ids)),
            labels=data.labels,
            present=data.present,
            class_correct=data.class_correct,
            tokens=data.tokens,
            rewards=data.rewards,
            confidence=data.confidence,
            prompt_tokens=data.prompt_tokens,
            source=data.source,
        )
    else:
        data = LabelledTraces.synthetic(questions, samples, seed=0)
    cap = min(samples, data.max_samples)
    rule = StaticThreshold(5, 0.7, cap)
    start = time.perf_counter()
    replay = Replay(data, orders=orders, cap=cap, seed=0)
    build_s = time.perf_counter() - start
    evaluation = replay.evaluate(rule)
    eval_s = _best_of(lambda: replay.evaluate(rule), repeat=repeat)
    return {
        "cluster_32_numbers_ms": cluster_s * 1e3,
        "cluster_function": f"{cluster.__module__}.{getattr(cluster, '__name__', 'cluster')}",
        "exact_cluster_32_numbers_ms": exact_s * 1e3,
        "replay": {"questions": data.questions, "samples": cap, "orders": orders, "source": data.source},
        "replay_build_s": build_s,
        "evaluate_rule_s": eval_s,
        "evaluate_total_s": build_s + eval_s,
        "rule": rule.to_dict(),
        "accuracy": evaluation.accuracy,
        "saved": evaluation.saved,
    }
