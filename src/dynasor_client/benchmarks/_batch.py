"""``dynasor-client bench batch``: the token-to-accuracy benchmark over recorded traces.

Every stopping method replayed as a stop rule over each evaluated question's recorded samples in many
random orders; the methods, figures and JSON are in ``docs/batch-benchmark.md``. The methods are in
``_batch_methods``, the table and plot in ``_batch_report``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..traces import Split, TraceQuestion, file_sha256, load_traces, select_split
from ._batch_methods import (
    Method,
    calibration_overlap,
    has_logprobs,
    load_ours,
    method_stops,
    reference_methods,
)
from ._batch_report import batch_table, plot_batch
from ._batch_unseen import UnseenSettings, cross_unseen, kfold_unseen, split_unseen
from ._common import run_metadata

if TYPE_CHECKING:
    from ..calibration import LabelledTraces, Replay
    from ..certainty import IntArray

__all__ = [
    "ALGORITHMS",
    "ANSWER_SOURCES",
    "Method",
    "UnseenSettings",
    "batch_table",
    "calibration_overlap",
    "method_stops",
    "plot_batch",
    "reference_methods",
    "replay_in_orders",
    "run_batch_benchmark",
    "with_extracted_answers",
]

ALGORITHMS = ("sc",)
#: where a sample's answer comes from: the traces' ``answer`` field, or the library's extractor run on
#: the sample's text (what a live program sees)
ANSWER_SOURCES = ("recorded", "extracted")
#: the extractor task each algorithm uses live (``self_consistency(task="math")``)
ALGORITHM_TASK = {"sc": "math"}
QUICK_SEEDS, QUICK_QUESTIONS, QUICK_REFERENCE = 4, 40, 150


# -- replaying ---------------------------------------------------------------------------------------------


def replay_in_orders(
    labelled: LabelledTraces, orders: Sequence[Sequence[int]], *, cap: int = 30, seed: int = 0
) -> Replay:
    """A one-order :class:`Replay` whose row q draws question q's samples in ``orders[q]``.

    ``orders[q]`` lists distinct sample indices (of the question's recorded samples); the samples
    it leaves out follow in index order. Used to score a method on the
    exact order a live program drew (e.g. the replay server's draws for one program).
    """
    from ..calibration import LabelledTraces, Replay, sample_orders

    if len(orders) != labelled.questions:
        raise ValueError(f"need one order per question: {len(orders)} for {labelled.questions}")
    # Replay shuffles every question with its own permutation; place the samples so that this
    # permutation reads them in the wanted order.
    base = sample_orders(labelled.ids, labelled.present, 1, seed)[:, 0, :]
    labels, tokens = labelled.labels.copy(), labelled.tokens.copy()
    rewards, confidence = labelled.rewards.copy(), labelled.confidence.copy()
    full: list[IntArray] = []
    for q, wanted in enumerate(orders):
        n = int(labelled.present[q].sum())
        head = [int(i) for i in wanted]
        if len(set(head)) != len(head) or any(not 0 <= i < n for i in head):
            raise ValueError(f"order of question {labelled.ids[q]!r} must list distinct indices < {n}")
        order = np.array(head + [i for i in range(n) if i not in set(head)], dtype=np.int64)
        full.append(order)
        slots = base[q, :n]  # the present samples are the first n columns
        labels[q, slots] = labelled.labels[q, order]
        tokens[q, slots] = labelled.tokens[q, order]
        rewards[q, slots] = labelled.rewards[q, order]
        confidence[q, slots] = labelled.confidence[q, order]
    data = LabelledTraces(
        ids=labelled.ids,
        labels=labels,
        present=labelled.present,
        class_correct=labelled.class_correct,
        tokens=tokens,
        rewards=rewards,
        confidence=confidence,
        prompt_tokens=labelled.prompt_tokens,
        source=labelled.source,
    )
    replay = Replay(data, orders=1, cap=cap, seed=seed)
    for q, order in enumerate(full):  # the layout above must give exactly the wanted order
        k = min(replay.cap, len(order))
        if not np.array_equal(replay.obs.labels[q, :k], labelled.labels[q, order[:k]]):
            raise AssertionError("replay_in_orders: the replayed order differs from the one asked for")
    return replay


def with_extracted_answers(
    questions: Sequence[TraceQuestion], task: str = "math"
) -> tuple[list[TraceQuestion], int]:
    """The questions with every sample's answer extracted from its text by the library's extractor
    for ``task`` (what a live program gets), and how many answers that changed.

    A changed sample loses its recorded ``correct`` flag (it graded the recorded answer). Samples
    without text keep their recorded answer.
    """
    from ..certainty import cluster_answers, get_extractor

    extract = get_extractor(task)
    out, changed = [], 0
    for q in questions:
        samples = []
        for sample in q.samples:
            answer = extract(sample.text) if sample.text else sample.answer
            same = answer == sample.answer or (
                answer is not None
                and sample.answer is not None
                and len(set(cluster_answers([answer, sample.answer]))) == 1
            )
            if same:
                samples.append(sample)
            else:
                changed += 1
                samples.append(dataclasses.replace(sample, answer=answer, correct=None))
        out.append(dataclasses.replace(q, samples=tuple(samples)))
    return out, changed


# -- the benchmark ----------------------------------------------------------------------------------------


def _reference_split(split: Split) -> Split:
    return {"test": "train", "train": "test", "all": "all"}[split]  # type: ignore[return-value]


def _figures(replay: Replay, stop: IntArray, rounds: IntArray) -> dict[str, Any]:
    from ..calibration import loss_estimate

    e = replay.summarise(stop, rounds)
    # paired with the full budget, resampled over questions (the same resamples for every method)
    loss = loss_estimate(replay.paired_loss(stop), seed=replay.seed)
    return {
        "accuracy": e.accuracy,
        "accuracy_ci95": list(e.accuracy_ci95),
        "accuracy_ci95_questions": list(e.accuracy_ci95_questions),
        "tokens": e.tokens,
        "samples": e.samples,
        "rounds": e.rounds,
        "saved": e.saved,
        "loss": loss.loss,
        "loss_ci95": list(loss.ci95),
    }


def _unseen(
    path: Path,
    questions: list[TraceQuestion],
    evaluated: list[TraceQuestion],
    reference: list[TraceQuestion],
    *,
    cap: int,
    folds: int,
    cross: Sequence[str | Path],
    settings: UnseenSettings,
    in_sample: bool,
) -> dict[str, Any]:
    """The unseen-question figures (``_batch_unseen``): train->test, k-fold, cross-dataset pairs."""
    out: dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "train_test": None,
        "kfold": None,
        "cross": [],
    }
    if not in_sample:
        out["train_test"] = split_unseen(reference, evaluated, cap=cap, settings=settings, source=path.name)
    if folds > 1:
        out["kfold"] = kfold_unseen(questions, k=folds, cap=cap, settings=settings, source=path.name)
    files: list[tuple[str, list[TraceQuestion]]] = [(path.name, questions)]
    for other in cross:
        other_path = Path(other)
        try:
            files.append((other_path.name, [q for q in load_traces(other_path) if q.samples]))
        except OSError as exc:
            raise ValueError(f"--cross: cannot read traces {other_path}: {exc}") from exc
    names = [name for name, _ in files]
    if len(set(names)) != len(names):
        raise ValueError(f"--cross: the traces files must differ, got {names}")
    for fit_name, fit_q in files:
        for judged_name, judged_q in files:
            if fit_name != judged_name:
                out["cross"].append(
                    cross_unseen(
                        fit_q,
                        judged_q,
                        cap=cap,
                        settings=settings,
                        fit_source=fit_name,
                        judged_source=judged_name,
                    )
                )
    return out


def run_batch_benchmark(
    traces: str | Path,
    *,
    algorithm: str = "sc",
    cap: int = 30,
    seeds: int = 20,
    split: Split = "test",
    calibration: str | Path | None = None,
    quick: bool = False,
    seed: int = 0,
    answers: str = "recorded",
    unseen: bool = False,
    folds: int = 5,
    cross: Sequence[str | Path] = (),
    confidence: float | None = 0.95,
    safety: float = 1.0,
) -> dict[str, Any]:
    """Run every method on one split of ``traces``; the figures as the documented JSON dict.

    ``answers="extracted"`` votes with the answers the library's extractor finds in each sample's
    text (as a live program does) instead of the recorded ones. ``unseen``: also calibrate afresh
    (bootstrap bound at ``confidence``; None: the normal margin of ``safety`` standard errors) and
    judge on questions the calibration never saw: train->test, ``folds``-fold over the file's
    questions (0: skip) and every ordered pair of ``traces`` and the ``cross`` files.
    """
    from ..calibration import Replay, label_traces
    from ..certainty import Cap

    started = time.perf_counter()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if cap < 1 or seeds < 1:
        raise ValueError("--cap and --seeds must be >= 1")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if answers not in ANSWER_SOURCES:
        raise ValueError(f"answers must be one of {ANSWER_SOURCES}, got {answers!r}")
    if folds < 0 or folds == 1:
        raise ValueError(f"--folds must be 0 (skip) or >= 2, got {folds}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"--confidence must be in (0, 1), got {confidence}")
    names = [Path(traces).name, *(Path(other).name for other in cross)]
    if len(set(names)) != len(names):  # refused before the run, not after it
        raise ValueError(f"--cross: the traces files must differ, got {names}")
    for other in cross:
        if not Path(other).is_file():
            raise ValueError(f"--cross: cannot read traces {other}: no such file")
    path = Path(traces)
    try:
        questions: list[TraceQuestion] = [q for q in load_traces(path) if q.samples]
        sha = file_sha256(path)
    except OSError as exc:
        raise ValueError(f"cannot read traces {path}: {exc}") from exc
    evaluated = select_split(questions, split)
    reference_split = _reference_split(split)
    reference = select_split(questions, reference_split)
    notes: list[str] = []
    if quick:
        seeds = min(seeds, QUICK_SEEDS)
        evaluated, reference = evaluated[:QUICK_QUESTIONS], reference[:QUICK_REFERENCE]
        notes.append(
            f"--quick: {len(evaluated)} evaluated questions, {len(reference)} reference questions, "
            f"{seeds} orders: a smoke run, not the benchmark"
        )
    if not evaluated:
        raise ValueError(f"{path}: no questions with samples in split {split!r}")
    in_sample = not reference or split == "all"
    if not reference:
        reference, reference_split = evaluated, split
    task = ALGORITHM_TASK[algorithm]
    live_evaluated, changed = with_extracted_answers(evaluated, task)
    total = sum(len(q.samples) for q in evaluated)
    if answers == "extracted":
        evaluated = live_evaluated
        reference = with_extracted_answers(reference, task)[0]
        notes.append(
            f"answers extracted from the sample texts (task {task!r}, as a live program does): {changed} of "
            f"{total} evaluated samples differ from the recorded answers"
        )
    elif changed:
        notes.append(
            f"{changed} of {total} evaluated samples: the library's extractor (task {task!r}) finds another "
            "answer in the text than the recorded one (e.g. a number where none was recorded); a live "
            "program votes with those (see --answers extracted)"
        )
    ours, ours_info, ours_notes = load_ours(
        calibration, cap, traces=path, sha=sha, evaluated_ids=[q.id for q in evaluated]
    )

    labelled = label_traces(evaluated, source=path.name)
    replay = Replay(labelled, orders=seeds, cap=cap, seed=seed)
    if replay.cap < cap:
        notes.append(f"--cap {cap} exceeds the samples recorded per question: the cap is {replay.cap}")
    cap = replay.cap
    ref_replay = Replay(label_traces(reference, source=path.name), orders=seeds, cap=cap, seed=seed)
    fitted_on = f"{path.name} {reference_split} ({len(reference)} questions)"
    logprobs = has_logprobs(labelled)
    methods, variant_notes = reference_methods(ref_replay, cap, fitted_on=fitted_on, logprobs=logprobs)
    notes += variant_notes
    if not logprobs:
        notes.append("mean-logprob and deepconf skipped: these traces carry no token logprobs")
    if in_sample:
        notes.append(
            "the profiled variants (dynasor-multistep, dynasor-curvefit, dynasor-dynamic-curvefit"
            + (", deepconf's filter" if logprobs else "")
            + f") were fitted on the evaluated questions themselves (split {split!r}): in-sample figures"
        )
    notes += ours_notes
    all_methods = [
        Method("baseline", Cap(cap), f"uniform: all {cap} samples"),
        *methods,
        ours,
        Method("oracle", None, "stops at the first count whose majority is the full-budget answer (a bound)"),
    ]

    uniform = []
    for k in range(1, cap + 1):
        e = replay.evaluate(Cap(k))
        uniform.append(
            {"k": k, "accuracy": e.accuracy, "accuracy_ci95": list(e.accuracy_ci95), "tokens": e.tokens}
        )
    results = {m.name: _figures(replay, *method_stops(replay, m)) for m in all_methods}
    oracle_saved = results["oracle"]["saved"]
    for figures in results.values():
        figures["oracle_share"] = figures["saved"] / oracle_saved if oracle_saved > 0 else float("nan")
    base = results["baseline"]
    unseen_figures = None
    if unseen:
        settings = UnseenSettings(confidence=confidence, safety=safety, orders=seeds, seed=seed)
        if quick:
            settings = dataclasses.replace(settings, folds=2, boots=200)
        unseen_figures = _unseen(
            path,
            questions[: QUICK_REFERENCE + QUICK_QUESTIONS] if quick else questions,
            evaluated,
            reference,
            cap=cap,
            folds=folds,
            cross=cross,
            settings=settings,
            in_sample=in_sample,
        )
    return {
        "benchmark": "batch",
        "algorithm": algorithm,
        "traces": path.name,
        "traces_sha256": sha,
        "questions": labelled.questions,
        "cap": cap,
        "seeds": seeds,
        "seed": seed,
        "split": split,
        "answers": answers,
        "quick": quick,
        "reference": {"split": reference_split, "questions": len(reference), "in_sample": in_sample},
        "baseline": {k: base[k] for k in ("accuracy", "accuracy_ci95", "tokens", "rounds")},
        "methods": results,
        "method_info": {
            m.name: {
                "description": m.description,
                "rule": None if m.rule is None else m.rule.to_dict(),
                "fitted_on": m.fitted_on,
            }
            for m in all_methods
        },
        "ours": ours_info,
        "uniform_curve": uniform,
        "unseen": unseen_figures,
        "notes": notes,
        **run_metadata(),
        "elapsed_s": time.perf_counter() - started,
    }
