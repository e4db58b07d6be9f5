"""Calibration (the paper's profiler): choose a stop rule from labelled traces, and judge rules.

An offline tool over trace files (``dynasor-client calibrate``, ``dynasor-client bench``): it builds
on :mod:`dynasor_client.certainty` and no program imports it at run time. A program loads the rule it
writes with :func:`dynasor_client.certainty.load_rule`.

    questions = load_traces("svamp-codex-sc30.jsonl")
    result = calibrate(select_split(questions, "train"), epsilon=0.002)   # minimise tokens s.t. accuracy
    result.save("calib.json")                                           # >= full budget - 0.2 points
    print(evaluate(result.rule, select_split(questions, "test")))       # judge on held-out questions

- :func:`load_traces`, :func:`split_of`, :func:`select_split` — the traces format and the
  deterministic train/test split (sha256 of the question id; 30% test).
- :class:`Replay`, :func:`evaluate` — many random sample orders at once; accuracy, tokens, rounds.
- :func:`calibrate` — the search (families of recipes, cross-validated, a bootstrap upper bound on
  the loss); :class:`CalibrationResult`; :class:`QuestionBootstrap`, :class:`LossEstimate` — the loss
  against the full budget with its interval over questions.
- :func:`default_rule` — the shipped rule (parameters calibrated on SVAMP train); :func:`load_rule`,
  :func:`checkpoints` and :func:`checkpoint_mask` — from :mod:`dynasor_client.certainty.rules`.
"""

from ..certainty.rules import checkpoint_mask, checkpoints, default_rule, load_rule
from ._bench import bench_certaindex
from ._curves import fit_remaining_curve, settle_counts
from ._families import (
    CurveFitFamily,
    DynamicCurveFitFamily,
    Family,
    Fitted,
    MultiStepFamily,
    Recipe,
    StaticFamily,
    default_families,
    default_schedules,
    fit_curve,
)
from ._replay import (
    Evaluation,
    LabelledTraces,
    Replay,
    Score,
    consulted_rounds,
    evaluate,
    label_traces,
    prefix_majority,
    sample_orders,
)
from ._result import CalibrationResult
from ._robust import LossEstimate, QuestionBootstrap, loss_estimate
from ._search import (
    DEFAULT_CONFIDENCE,
    Candidate,
    Objective,
    SearchOutcome,
    SearchSpace,
    View,
    calibrate,
    candidate_signals,
    evaluate_published,
    paper_rule,
    published_rules,
    search,
)
from ._steps import StepTable, fit_step_thresholds, threshold_grid
from ._traces import (
    TEST_FRACTION,
    Split,
    TraceQuestion,
    TraceSample,
    default_cluster,
    equivalence_from_cluster,
    exact_cluster,
    fold_of,
    load_traces,
    select_split,
    split_of,
)

__all__ = [
    "DEFAULT_CONFIDENCE",
    "TEST_FRACTION",
    "CalibrationResult",
    "Candidate",
    "CurveFitFamily",
    "DynamicCurveFitFamily",
    "Evaluation",
    "Family",
    "Fitted",
    "LabelledTraces",
    "LossEstimate",
    "MultiStepFamily",
    "Objective",
    "QuestionBootstrap",
    "Recipe",
    "Replay",
    "Score",
    "SearchOutcome",
    "SearchSpace",
    "Split",
    "StaticFamily",
    "StepTable",
    "TraceQuestion",
    "TraceSample",
    "View",
    "bench_certaindex",
    "calibrate",
    "candidate_signals",
    "checkpoint_mask",
    "checkpoints",
    "consulted_rounds",
    "default_cluster",
    "default_families",
    "default_rule",
    "default_schedules",
    "equivalence_from_cluster",
    "evaluate",
    "evaluate_published",
    "exact_cluster",
    "fit_curve",
    "fit_remaining_curve",
    "fit_step_thresholds",
    "fold_of",
    "label_traces",
    "load_rule",
    "load_traces",
    "loss_estimate",
    "paper_rule",
    "prefix_majority",
    "published_rules",
    "sample_orders",
    "search",
    "select_split",
    "settle_counts",
    "split_of",
    "threshold_grid",
]
