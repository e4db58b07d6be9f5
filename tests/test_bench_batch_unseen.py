"""``dynasor-client bench batch --unseen``: the loss on questions the calibration never saw (train->test,
k-fold over questions, cross-dataset at the common cap), each with intervals over questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynasor_client.benchmarks import batch_table
from dynasor_client.benchmarks._batch_unseen import outer_fold
from dynasor_client.cli import main
from dynasor_client.traces import load_traces
from tests.support.replay import TRACES, traces_or_skip

MATH = "math-qwen25math-sc8.jsonl"
GSM8K = "gsm8k-qwen25coder05b-sc8-logprobs.jsonl"
FIGURES = {"questions", "baseline_accuracy", "accuracy", "loss", "loss_ci95", "saved", "saved_ci95", "tokens"}


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    traces_or_skip(MATH)
    traces_or_skip(GSM8K)
    out = tmp_path_factory.mktemp("unseen") / "out.json"
    args = ["bench", "batch", "--traces", str(TRACES / MATH), "--algorithm", "sc", "--json", str(out)]
    rc = main([*args, "--seeds", "4", "--unseen", "--folds", "3", "--cross", str(TRACES / GSM8K)])
    assert rc == 0
    data: dict[str, Any] = json.loads(out.read_text())
    return data


def _check(figures: dict[str, Any]) -> None:
    assert set(figures) >= FIGURES
    lo, hi = figures["loss_ci95"]
    assert lo <= figures["loss"] <= hi
    slo, shi = figures["saved_ci95"]
    assert slo <= figures["saved"] <= shi <= 1.0
    # the loss is the full budget's accuracy minus the rule's, on the same questions and orders
    assert figures["loss"] == pytest.approx(figures["baseline_accuracy"] - figures["accuracy"])
    assert figures["saved"] == pytest.approx(1 - figures["tokens"] / figures["full_tokens"])


def test_every_method_reports_its_loss_with_an_interval(unseen_run: dict[str, Any]) -> None:
    base = unseen_run["methods"]["baseline"]
    assert base["loss"] == 0.0 and base["loss_ci95"] == [0.0, 0.0]
    for name, figures in unseen_run["methods"].items():
        lo, hi = figures["loss_ci95"]
        assert lo <= figures["loss"] <= hi, name
        assert figures["loss"] == pytest.approx(base["accuracy"] - figures["accuracy"]), name


def test_unseen_figures_cover_each_question_once(unseen_run: dict[str, Any]) -> None:
    unseen = unseen_run["unseen"]
    assert unseen["settings"]["confidence"] == 0.95 and unseen["settings"]["orders"] == 4
    questions = [q for q in load_traces(TRACES / MATH) if q.samples]
    train_test = unseen["train_test"]
    _check(train_test)
    assert train_test["questions"] == unseen_run["questions"]  # judged on the evaluated split
    assert train_test["fitted"] + train_test["questions"] == len(questions)
    kfold = unseen["kfold"]
    _check(kfold)
    assert kfold["k"] == 3 and kfold["questions"] == len(questions)  # every question judged once
    folds = np.array([outer_fold(q.id, 3) for q in questions])
    assert [f["questions"] for f in kfold["folds"]] == [int((folds == f).sum()) for f in range(3)]
    pairs = {(c["fitted_on"], c["judged_on"]) for c in unseen["cross"]}
    assert pairs == {(MATH, GSM8K), (GSM8K, MATH)}
    for cross in unseen["cross"]:
        _check(cross)
        assert cross["cap"] == 8
    table = batch_table(unseen_run)
    assert "unseen questions" in table and "3-fold over questions" in table and f"{GSM8K} -> {MATH}" in table


def test_unseen_bad_arguments_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces_or_skip(MATH)
    out = tmp_path / "out.json"
    args = ["bench", "batch", "--traces", str(TRACES / MATH), "--algorithm", "sc", "--json", str(out)]
    assert main([*args, "--unseen", "--folds", "1"]) == 2
    assert main([*args, "--unseen", "--confidence", "1.5"]) == 2
    assert main([*args, "--unseen", "--cross", str(tmp_path / "missing.jsonl")]) == 2
    assert main([*args, "--unseen", "--cross", str(TRACES / MATH)]) == 2  # the same file twice
    err = capsys.readouterr().err
    assert "--folds" in err and "--confidence" in err and "cannot read traces" in err and "must differ" in err
    assert not out.exists()
