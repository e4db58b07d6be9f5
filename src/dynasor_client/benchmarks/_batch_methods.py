"""The batch benchmark's methods: every stopping method as a named stop rule (the paper's rules and
their profiled variants, the published baselines, the calibrated rule, the oracle), where its stop
falls in a replay, and whether a calibrated rule saw the evaluated questions
(``docs/batch-benchmark.md``: *Methods*)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..traces import TEST_FRACTION, split_of
from ._peer_rules import ITS_HUB_THRESHOLD, its_hub_adaptive

if TYPE_CHECKING:
    from ..calibration import LabelledTraces, Replay
    from ..certainty import IntArray, StopRule

__all__ = [
    "Method",
    "calibration_overlap",
    "has_logprobs",
    "load_ours",
    "method_stops",
    "oracle_stops",
    "reference_methods",
]

DETECT = 5  #: the paper's detect step for self-consistency
PAPER_THRESHOLD = 0.7  #: the paper's entropy threshold at the detect step
ADAPTIVE_P = 0.95  #: Adaptive-Consistency's stopping probability
ESC_WINDOW = 5  #: ESC's window
CONSENSUS = 0.95  #: DeepConf-online's consensus threshold
DEEPCONF_PERCENTILE = 10.0  #: DeepConf-low keeps the samples above this percentile of confidence
VARIANT_EPSILON = 0.002  #: accuracy the profiled paper variants may lose against the full budget


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
    from ..calibration import consulted_rounds

    if method.rule is None:
        return oracle_stops(replay), np.ones(replay.rows, dtype=np.int64)
    stop = replay.stops(method.rule)
    return stop, consulted_rounds(method.rule, replay.obs, stop)


# -- methods -----------------------------------------------------------------------------------------------


def has_logprobs(labelled: LabelledTraces) -> bool:
    return bool(np.isfinite(labelled.confidence[labelled.present]).any())


def reference_methods(
    reference: Replay, cap: int, *, fitted_on: str, logprobs: bool
) -> tuple[list[Method], list[str]]:
    """The paper's rules, its profiled variants (fitted on ``reference``) and the published baselines.

    Returns the methods and notes (variants for which the profiler found no setting within epsilon).
    """
    from ..calibration import (
        CurveFitFamily,
        DynamicCurveFitFamily,
        MultiStepFamily,
        published_rules,
        search,
    )
    from ..certainty import Cap, EntropyCertainty, confidence_at_least

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
    methods.append(
        Method(
            "its-hub-adaptive",
            its_hub_adaptive(cap),
            f"its-hub 1.2.0 adaptive self-consistency: at 2, 4, 8, ... samples stop if the leader holds "
            f">= {ITS_HUB_THRESHOLD:g} of them (_peer_rules.py)",
        )
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


def load_ours(
    calibration: str | Path | None, cap: int, *, traces: Path, sha: str, evaluated_ids: Sequence[str]
) -> tuple[Method, dict[str, Any], list[str]]:
    """The "ours" method, its provenance and notes; refuses a ``--calibration`` that saw these questions."""
    from ..certainty import Cap, default_rule, load_rule
    from ..certainty.rules import DEFAULT_RULE_FILE

    notes: list[str] = []
    if calibration is None:
        from importlib import resources

        package = resources.files("dynasor_client.certainty.rules")
        text = package.joinpath(DEFAULT_RULE_FILE).read_text("utf-8")
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
