"""``dynasor-client bench batch``: the token-to-accuracy benchmark over recorded traces.

    dynasor-client bench batch --traces svamp-codex-sc30.jsonl --algorithm sc \\
        [--cap 30] [--seeds 20] [--split test] [--calibration calib.json] --json out.json [--plot out.png]

Every method is a stop rule replayed by the calibration machinery
(:class:`~dynasor_client.certainty.calibration.Replay`): each evaluated question's recorded samples
are shuffled into ``seeds`` random orders (paired: the same orders for every method), a method stops
each order where its rule fires, and the answer is the majority of the samples drawn so far. So the
figures are what the same rule objects do inside :func:`~dynasor_client.algorithms.self_consistency`
(a test replays a few questions over HTTP through the replay server and checks that they are equal).

**Methods** (``--algorithm sc``: self-consistency; the only one so far):

- ``uniform`` (the ``uniform_curve``): k samples for every question, k = 1..cap. ``baseline`` is
  uniform at the cap (the full budget).
- ``dynasor-threshold``: the paper's static threshold: at 5 samples stop if entropy H~ >= 0.7, else
  run to the cap.
- ``dynasor-multistep``, ``dynasor-curvefit``, ``dynasor-dynamic-curvefit``: the paper's multi-step
  threshold, curve-fit and dynamic curve-fit allocation on entropy H~, their parameters profiled
  (``calibrate``, epsilon 0.002, 5 folds) on the *reference* questions: the other split of the same
  file (train when evaluating test and vice versa; with ``--split all``, the evaluated questions
  themselves, which the notes flag as in-sample). When no setting keeps accuracy within epsilon the
  profiler falls back to the full budget, and the notes say so.
- ``adaptive-consistency``: stop when P(leader is the majority) >= 0.95 (Beta/Dirichlet), checked
  after every sample. ``esc``: windows of 5 samples, stop after the first unanimous window.
- ``mean-logprob`` and ``deepconf`` (only where the traces carry token logprobs; otherwise a note says
  they were skipped): stop when the vote share weighted by exp(mean logprob) reaches 0.95, checked
  after every sample from the 5th; ``deepconf`` first drops samples whose mean logprob is below the
  10th percentile of the reference questions' samples (DeepConf-low's filter, warm-up taken from other
  questions). Only the *stop* is confidence-driven: the answer is still the plain majority.
- ``ours``: the rule in ``--calibration`` (a calibration result or rule file), else the library's
  :func:`~dynasor_client.certainty.default_rule` (calibrated on SVAMP train: ``--split test`` is the
  honest default). A ``--calibration`` rule whose recorded provenance (question ids, else traces file
  and split) overlaps the evaluated questions is refused; the default rule is run but flagged in-sample.
- ``oracle``: stops each order at the first sample count whose majority is already the full-budget
  answer (one round). A bound, not a method: it knows the answer it must reach.

**Answers.** By default a sample votes with its recorded ``answer``, as calibration does.
``--answers extracted`` votes with what the library's extractor finds in the sample's text, which
is what a live program sees; they differ where the extractor's fallback (the last number) finds an
answer the recording does not have (118 of SVAMP's 18,000 samples: programs that failed to run). The
notes count such samples either way.

**Figures** per method: ``accuracy`` (fraction correct over questions x orders), ``accuracy_ci95``
(2.5th-97.5th percentile of the per-order accuracies), ``accuracy_ci95_questions`` (normal interval
over questions), ``tokens`` (mean generated tokens per question), ``samples``, ``rounds`` (mean
sequential rounds per question: the checkpoints a program consults its rule at, up to its stop; a
latency proxy), ``saved`` (fraction of the baseline's tokens saved) and ``oracle_share`` (``saved`` /
the oracle's ``saved``; null when the oracle saves nothing). The oracle bounds the saving of methods
that reach the full-budget answer; one that stops earlier with another answer can save more (an
``oracle_share`` above 1), which its accuracy then shows.

**JSON** (``--json``; keys are stable, new ones may be added)::

    {"benchmark": "batch", "algorithm": "sc",
     "traces": "svamp-codex-sc30.jsonl", "traces_sha256": str,
     "questions": int, "cap": int, "seeds": int, "seed": int, "split": "test",
     "answers": "recorded" | "extracted", "quick": bool,
     "reference": {"split": str, "questions": int, "in_sample": bool},
     "baseline": {"accuracy", "accuracy_ci95", "tokens", "rounds"},
     "methods": {NAME: {"accuracy": float, "accuracy_ci95": [lo, hi], "accuracy_ci95_questions": [lo, hi],
                        "tokens": float, "samples": float, "rounds": float, "saved": float,
                        "oracle_share": float | null}},
     "method_info": {NAME: {"description": str, "rule": {...} | null, "fitted_on": str | null}},
     "ours": {"source": str, "calibrated_on": str, "in_sample": bool | null},
     "uniform_curve": [{"k": int, "accuracy": float, "accuracy_ci95": [lo, hi], "tokens": float}],
     "notes": [str],
     "versions": {"python", "numpy", "scipy", "dynasor_client"}, "commit": str | null,
     "machine": {...}, "elapsed_s": float}

``methods`` holds ``baseline`` and ``oracle`` too. ``--quick`` keeps 4 orders, the first 40 evaluated
and 150 reference questions (for tests). Default settings take about 10 s on SVAMP (2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..traces import TEST_FRACTION, Split, TraceQuestion, load_traces, select_split, split_of
from ..traces._format import file_sha256
from ._common import finish_command, format_table, plot_token_accuracy, run_metadata

if TYPE_CHECKING:
    from ..certainty import StopRule
    from ..certainty._observations import IntArray
    from ..certainty.calibration import LabelledTraces, Replay

__all__ = [
    "ALGORITHMS",
    "ANSWER_SOURCES",
    "Method",
    "add_batch_parser",
    "batch_command",
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
DETECT = 5  #: the paper's detect step for self-consistency
PAPER_THRESHOLD = 0.7  #: the paper's entropy threshold at the detect step
ADAPTIVE_P = 0.95  #: Adaptive-Consistency's stopping probability
ESC_WINDOW = 5  #: ESC's window
CONSENSUS = 0.95  #: DeepConf-online's consensus threshold
DEEPCONF_PERCENTILE = 10.0  #: DeepConf-low keeps the samples above this percentile of confidence
VARIANT_EPSILON = 0.002  #: accuracy the profiled paper variants may lose against the full budget
QUICK_SEEDS, QUICK_QUESTIONS, QUICK_REFERENCE = 4, 40, 150


@dataclass(frozen=True)
class Method:
    """A named stop rule (``rule`` None: the oracle) and where its parameters come from."""

    name: str
    rule: StopRule | None
    description: str
    fitted_on: str | None = None


# -- replaying ---------------------------------------------------------------------------------------------


def oracle_stops(replay: Replay) -> IntArray:
    """Per row: the first position whose prefix majority is the full-budget answer of that order."""
    return np.asarray(np.argmax(replay.agree, axis=1), dtype=np.int64)


def method_stops(replay: Replay, method: Method) -> tuple[IntArray, IntArray]:
    """Stop position and sequential rounds per row of ``replay`` for ``method`` (oracle: 1 round)."""
    from ..certainty.calibration import consulted_rounds

    if method.rule is None:
        return oracle_stops(replay), np.ones(replay.rows, dtype=np.int64)
    stop = replay.stops(method.rule)
    return stop, consulted_rounds(method.rule, replay.obs, stop)


def replay_in_orders(
    labelled: LabelledTraces, orders: Sequence[Sequence[int]], *, cap: int = 30, seed: int = 0
) -> Replay:
    """A one-order :class:`Replay` whose row q draws question q's samples in ``orders[q]``.

    ``orders[q]`` lists distinct sample indices (of the question's recorded samples); the samples
    it leaves out follow in index order. Used to score a method on the
    exact order a live program drew (e.g. the replay server's draws for one program).
    """
    from ..certainty.calibration import LabelledTraces, Replay, sample_orders

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


# -- methods -----------------------------------------------------------------------------------------------


def _has_logprobs(labelled: LabelledTraces) -> bool:
    return bool(np.isfinite(labelled.confidence[labelled.present]).any())


def reference_methods(
    reference: Replay, cap: int, *, fitted_on: str, logprobs: bool
) -> tuple[list[Method], list[str]]:
    """The paper's rules, its profiled variants (fitted on ``reference``) and the published baselines.

    Returns the methods and notes (variants for which the profiler found no setting within epsilon).
    """
    from ..certainty import EntropyCertainty, confidence_at_least
    from ..certainty._rules import Cap
    from ..certainty.calibration import (
        CurveFitFamily,
        DynamicCurveFitFamily,
        MultiStepFamily,
        search,
    )
    from ..certainty.calibration._search import published_rules

    published = published_rules(cap)
    detect = min(DETECT, cap)
    methods = [
        Method(
            "dynasor-threshold",
            published["paper_static"],
            f"the paper's static threshold: at {detect} samples stop if H~ >= {PAPER_THRESHOLD}",
        )
    ]
    notes: list[str] = []
    variants = [
        ("dynasor-multistep", MultiStepFamily(hopeless=(False,)), "multi-step thresholds on H~"),
        ("dynasor-curvefit", CurveFitFamily(), "curve-fit allocation on H~ (once, at the detect step)"),
        ("dynasor-dynamic-curvefit", DynamicCurveFitFamily(), "dynamic curve-fit allocation on H~"),
    ]
    for name, family, what in variants:
        outcome = search(
            reference, epsilon=VARIANT_EPSILON, families=[family], signals=[EntropyCertainty()], folds=5
        )
        if outcome.recipe is None:
            notes.append(
                f"{name}: the profiler found no {what} within {VARIANT_EPSILON:g} of the full budget on "
                f"{fitted_on}, so it runs the full budget"
            )
        methods.append(
            Method(
                name,
                Cap(cap) | outcome.rule,
                f"the paper's {what}, profiled (epsilon {VARIANT_EPSILON:g})",
                fitted_on,
            )
        )
    if "adaptive_consistency" in published:
        methods.append(
            Method(
                "adaptive-consistency",
                published["adaptive_consistency"],
                f"Adaptive-Consistency: stop when P(leader is the majority) >= {ADAPTIVE_P}",
            )
        )
        methods.append(
            Method("esc", published["esc"], f"ESC: stop after the first unanimous window of {ESC_WINDOW}")
        )
    if logprobs:
        methods.append(
            Method(
                "mean-logprob",
                Cap(cap) | confidence_at_least(CONSENSUS, transform="exp", min_obs=detect),
                f"stop when the exp(mean logprob)-weighted vote share >= {CONSENSUS} (from {detect} samples)",
            )
        )
        conf = reference.obs.confidence[reference.obs.valid]
        conf = conf[np.isfinite(conf)]
        if conf.size:
            floor = round(float(np.percentile(conf, DEEPCONF_PERCENTILE)), 6)
            methods.append(
                Method(
                    "deepconf",
                    Cap(cap)
                    | confidence_at_least(CONSENSUS, min_confidence=floor, transform="exp", min_obs=detect),
                    f"DeepConf-low online: samples with mean logprob < {floor:.4f} (the "
                    f"{DEEPCONF_PERCENTILE:g}th percentile of reference samples) left out of the weighted"
                    f" vote share; stop when it is >= {CONSENSUS}",
                    fitted_on,
                )
            )
    return methods, notes


def calibration_overlap(
    fitted_on: Mapping[str, Any], *, traces_name: str, traces_sha256: str, evaluated_ids: Sequence[str]
) -> tuple[bool | None, str]:
    """Whether a rule calibrated on ``fitted_on`` (a calibration JSON's provenance) saw any of the
    evaluated questions: True, False, or None when the provenance cannot tell; and a description.

    Question ids decide when recorded. Otherwise, for the same traces file (same sha256 or name),
    the recorded split (and test fraction) decides; for another traces file, there is no overlap.
    """
    source, sha, split = fitted_on.get("traces"), fitted_on.get("sha256"), fitted_on.get("split")
    count = fitted_on.get("questions")
    described = f"{source or 'unrecorded traces'} {split or '(split not recorded)'}"
    if count is not None:
        described += f" ({count} questions)"
    ids = fitted_on.get("question_ids")
    if ids is not None:
        return bool(set(map(str, ids)) & set(evaluated_ids)), described
    same = (sha is not None and sha == traces_sha256) or (
        source is not None and Path(str(source)).name == traces_name
    )
    if not same:
        return (None if source is None and sha is None else False), described
    if split not in ("train", "test", "all"):
        return None, described
    if split == "all":
        return True, described
    fraction = float(fitted_on.get("test_fraction", TEST_FRACTION))
    return any(split_of(q, fraction) == split for q in evaluated_ids), described


def _load_ours(
    calibration: str | Path | None, cap: int, *, traces: Path, sha: str, evaluated_ids: Sequence[str]
) -> tuple[Method, dict[str, Any], list[str]]:
    """The "ours" method, its provenance and notes; refuses a ``--calibration`` that saw these questions."""
    import json

    from ..certainty import default_rule
    from ..certainty._allocation import DEFAULT_RULE_FILE
    from ..certainty._rules import Cap
    from ..certainty.calibration import load_rule

    notes: list[str] = []
    if calibration is None:
        from importlib import resources

        text = resources.files("dynasor_client.certainty").joinpath(DEFAULT_RULE_FILE).read_text("utf-8")
        data, rule, source = json.loads(text), default_rule(), "default_rule()"
    else:
        path = Path(calibration)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            rule = load_rule(path)
        except OSError as exc:
            raise ValueError(f"--calibration: cannot read {path}: {exc}") from exc
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"--calibration: {path} holds no rule ({exc})") from exc
        source = str(path)
    fitted_on = data.get("fitted_on", {}) if isinstance(data, dict) else {}
    overlap, described = calibration_overlap(
        fitted_on, traces_name=traces.name, traces_sha256=sha, evaluated_ids=evaluated_ids
    )
    if overlap and calibration is not None:
        raise ValueError(
            f"--calibration {source}: the rule was calibrated on {described}, which includes questions "
            "being evaluated; evaluate on other questions (e.g. --split test for a rule calibrated on "
            "train) or calibrate on another split"
        )
    if overlap:
        notes.append(
            f"ours ({source}) was calibrated on {described}, which includes evaluated questions: its "
            "figures are IN-SAMPLE (evaluate with --split test for an honest figure)"
        )
    elif overlap is None:
        notes.append(f"ours ({source}): its recorded provenance cannot show whether it saw these questions")
    info = {"source": source, "calibrated_on": described, "in_sample": overlap}
    return Method("ours", Cap(cap) | rule, f"{source}, calibrated on {described}", described), info, notes


# -- the benchmark ----------------------------------------------------------------------------------------


def _reference_split(split: Split) -> Split:
    return {"test": "train", "train": "test", "all": "all"}[split]  # type: ignore[return-value]


def _figures(replay: Replay, stop: IntArray, rounds: IntArray) -> dict[str, Any]:
    e = replay.summarise(stop, rounds)
    return {
        "accuracy": e.accuracy,
        "accuracy_ci95": list(e.accuracy_ci95),
        "accuracy_ci95_questions": list(e.accuracy_ci95_questions),
        "tokens": e.tokens,
        "samples": e.samples,
        "rounds": e.rounds,
        "saved": e.saved,
    }


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
) -> dict[str, Any]:
    """Run every method on one split of ``traces``; the figures as the documented JSON dict.

    ``answers="extracted"`` votes with the answers the library's extractor finds in each sample's
    text (as a live program does) instead of the recorded ones.
    """
    from ..certainty._rules import Cap
    from ..certainty.calibration import Replay, label_traces

    started = time.perf_counter()
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if cap < 1 or seeds < 1:
        raise ValueError("--cap and --seeds must be >= 1")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    if answers not in ANSWER_SOURCES:
        raise ValueError(f"answers must be one of {ANSWER_SOURCES}, got {answers!r}")
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
    ours, ours_info, ours_notes = _load_ours(
        calibration, cap, traces=path, sha=sha, evaluated_ids=[q.id for q in evaluated]
    )

    labelled = label_traces(evaluated, source=path.name)
    replay = Replay(labelled, orders=seeds, cap=cap, seed=seed)
    if replay.cap < cap:
        notes.append(f"--cap {cap} exceeds the samples recorded per question: the cap is {replay.cap}")
    cap = replay.cap
    ref_replay = Replay(label_traces(reference, source=path.name), orders=seeds, cap=cap, seed=seed)
    fitted_on = f"{path.name} {reference_split} ({len(reference)} questions)"
    logprobs = _has_logprobs(labelled)
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
        "notes": notes,
        **run_metadata(),
        "elapsed_s": time.perf_counter() - started,
    }


# -- output -----------------------------------------------------------------------------------------------


def _pct(value: Any, digits: int = 1) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:.{digits}f}%"


def batch_table(result: Mapping[str, Any]) -> str:
    """The figures as a readable table, with the uniform curve at a few k and the notes."""
    rows = []
    for name, f in result["methods"].items():
        lo, hi = f["accuracy_ci95"]
        rows.append(
            [
                name,
                _pct(f["accuracy"], 2),
                f"{_pct(lo, 2)}-{_pct(hi, 2)}",
                f"{f['tokens']:.0f}",
                f"{f['samples']:.2f}",
                f"{f['rounds']:.2f}",
                _pct(f["saved"]),
                _pct(f["oracle_share"]),
            ]
        )
    head = (
        f"bench batch: {result['algorithm']} on {result['traces']}, split {result['split']} "
        f"({result['questions']} questions), cap {result['cap']}, {result['seeds']} sample orders"
    )
    table = format_table(
        ["method", "accuracy", "95% over orders", "tokens", "samples", "rounds", "saved", "of oracle"], rows
    )
    curve = result["uniform_curve"]
    ks = sorted({k for k in (1, 2, 3, 5, 10, 15, 20, 30, result["cap"]) if k <= result["cap"]})
    uniform = "uniform: " + ", ".join(
        f"k={c['k']} {_pct(c['accuracy'], 2)} @ {c['tokens']:.0f}" for c in curve if c["k"] in ks
    )
    ours = result["ours"]
    lines = [head, table, uniform, f"ours: {ours['source']}, calibrated on {ours['calibrated_on']}"]
    lines += [f"note: {n}" for n in result["notes"]]
    lines.append(f"({result['elapsed_s']:.1f} s)")
    return "\n".join(lines)


def plot_batch(result: Mapping[str, Any], path: str | Path) -> None:
    """Token-to-accuracy chart: the uniform curve and one point per method."""
    plot_token_accuracy(
        path,
        curve=[(c["tokens"], c["accuracy"]) for c in result["uniform_curve"]],
        points={name: (f["tokens"], f["accuracy"]) for name, f in result["methods"].items()},
        title=f"{result['algorithm']} on {result['traces']} ({result['split']}, {result['questions']} "
        f"questions, {result['seeds']} orders)",
    )


# -- CLI -------------------------------------------------------------------------------------------------


def add_batch_parser(bench_sub: Any) -> argparse.ArgumentParser:
    """``bench batch`` under the ``bench`` subcommand's subparsers."""
    parser: argparse.ArgumentParser = bench_sub.add_parser(
        "batch",
        help="token-to-accuracy of every stopping method, replayed over recorded traces",
        description="Replays recorded traces in many sample orders through the library's stop rules; "
        "see dynasor_client.benchmarks._batch for the methods and the JSON.",
    )
    parser.add_argument("--traces", required=True, help="traces file (JSON lines, shared/data/traces format)")
    parser.add_argument("--algorithm", required=True, choices=ALGORITHMS, help="sc: self-consistency")
    parser.add_argument("--cap", type=int, default=30, help="most samples per question (the full budget)")
    parser.add_argument("--seeds", type=int, default=20, help="random sample orders per question")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample orders")
    parser.add_argument(
        "--split", choices=["train", "test", "all"], default="test", help="the questions evaluated"
    )
    parser.add_argument("--calibration", default=None, help="the rule of 'ours' (default: default_rule())")
    parser.add_argument("--json", dest="json_out", required=True, help="write the figures here (JSON)")
    parser.add_argument("--plot", default=None, help="draw token-to-accuracy here (PNG; needs matplotlib)")
    parser.add_argument(
        "--answers",
        choices=ANSWER_SOURCES,
        default="recorded",
        help="vote with the recorded answers, or with those the library extracts from each text",
    )
    parser.add_argument("--quick", action="store_true", help="fewer orders and questions (a smoke run)")
    return parser


def batch_command(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON (and plot). Failures raise ValueError."""
    result = run_batch_benchmark(
        args.traces,
        algorithm=args.algorithm,
        cap=args.cap,
        seeds=args.seeds,
        split=args.split,
        calibration=args.calibration,
        quick=args.quick,
        seed=args.seed,
        answers=args.answers,
    )
    return finish_command(result, batch_table(result), args.json_out, plot=plot_batch, plot_path=args.plot)
