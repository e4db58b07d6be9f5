"""``dynasor-client bench peers``: its JSON (figures finite, tokens equal to the replay server's own
counters), and that its-hub's own code stops where ``bench batch``'s reimplementation of its rule
(and our rules) stop on the same sample sequences."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynasor_client.benchmarks import (
    PEER_METHODS,
    Method,
    its_hub_adaptive,
    method_stops,
    replay_in_orders,
    run_peers_benchmark,
    with_extracted_answers,
)
from dynasor_client.calibration import label_traces
from dynasor_client.certainty import Observations, adaptive_consistency, cap, default_rule
from dynasor_client.cli import main
from dynasor_client.replay import ReplayEngine
from dynasor_client.traces import select_split
from tests.support.replay import TRACES, traces_or_skip

pytest.importorskip("its_hub", reason="its-hub is not installed: pip install 'dynasor-client[peers]'")

SVAMP = "svamp-codex-sc30.jsonl"
FIGURES = ("tokens", "server_tokens", "requests", "samples", "accuracy", "saved")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_quick_run_writes_consistent_json(tmp_path: Path) -> None:
    traces_or_skip(SVAMP)
    out = tmp_path / "peers.json"
    rc = main(["bench", "peers", "--traces", str(TRACES / SVAMP), "--quick", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "peers" and data["quick"] is True and data["split"] == "test"
    assert set(data["methods"]) == set(PEER_METHODS) == set(data["runs"])
    assert data["its_hub"]["version"] == "1.2.0"
    assert data["ours"]["in_sample"] is False  # default_rule() was calibrated on train
    questions, seeds = data["questions"], len(data["seeds"])
    assert questions == len(data["question_ids"]) >= 2 and seeds >= 2
    for name, figures in data["methods"].items():
        for key in FIGURES:
            summary = figures[key]
            assert len(summary["per_seed"]) == seeds and all(map(_finite, summary["per_seed"])), (name, key)
            low, high = summary["ci95"]
            assert _finite(summary["mean"]) and low <= summary["mean"] <= high, (name, key)
        for run in data["runs"][name]:
            # the tokens the clients counted are those the replay server counted generating
            assert run["tokens"] == run["server_tokens"] > 0, name
            assert 0.0 <= run["accuracy"] <= 1.0 and run["correct"] == round(run["accuracy"] * questions)
            assert 1 <= run["samples"] <= data["cap"] and run["requests"] >= questions, name
    for full in data["runs"]["full"]:
        assert full["samples"] == data["cap"] and full["saved"] == 0.0
    for run in data["runs"]["its-hub-adaptive"]:  # its-hub sends one sample per request
        assert run["requests"] == round(run["samples"] * questions)
    for name in ("its-hub-adaptive", "ours", "adaptive"):
        for run, full in zip(data["runs"][name], data["runs"]["full"], strict=True):
            assert run["saved"] == pytest.approx(1 - run["tokens"] / full["tokens"])
            assert run["tokens"] < full["tokens"], name


def test_its_hub_stops_where_the_reimplementation_does() -> None:
    """its-hub's AdaptiveSelfConsistency over HTTP, and our rules through self_consistency, draw the
    replay server's sample sequence of each question; replaying that sequence through the stop rules
    of ``bench batch`` must stop at the same sample for every question and seed."""
    served = select_split(traces_or_skip(SVAMP), "test")[:24]
    cap_n = 30
    result = run_peers_benchmark(TRACES / SVAMP, questions=len(served), seeds=2, keep_outcomes=True)
    assert result["question_ids"] == [q.id for q in served]
    labelled = label_traces(with_extracted_answers(served)[0])  # the answers a live program reads
    rules = {
        "its-hub-adaptive": its_hub_adaptive(cap_n),
        "ours": cap(cap_n) | default_rule(),
        "adaptive": cap(cap_n) | adaptive_consistency(0.95),
        "full": cap(cap_n),
    }
    stops: set[int] = set()
    for i, seed in enumerate(result["seeds"]):
        engine = ReplayEngine(served, seed=seed)
        orders = [
            engine.draw_order(ReplayEngine.program_name(None, f"peers-{q.id}", None)[0], row, cap_n)
            for row, q in enumerate(served)
        ]
        replay = replay_in_orders(labelled, orders, cap=cap_n)
        for name, rule in rules.items():
            stop, _ = method_stops(replay, Method(name, rule, ""))
            outcomes = result["runs"][name][i]["outcomes"]
            for row, outcome in enumerate(outcomes):
                expected = int(replay.counts[row, stop[row]])
                assert outcome["samples"] == expected, (name, seed, outcome["question"])
                if name == "its-hub-adaptive":
                    stops.add(expected)
    assert len(stops) >= 3  # the sequences exercise several of its checks (2, 4, 8, 16, 30)


def test_the_rule_checks_at_doubling_counts_only() -> None:
    labels = [[0, 0, 1, 1, 0, 0, 0, 0, 0]]  # checks at 2 (2/2) and 8 (6/8 >= 0.75) fire, 4 (2/4) not
    obs = Observations(labels=np.array(labels), valid=np.ones((1, 9), dtype=bool))
    rule = its_hub_adaptive(9)
    assert rule.batch(obs)[0].tolist() == [False, True, False, False, False, False, False, True, True]
    with pytest.raises(ValueError, match="threshold"):
        its_hub_adaptive(9, threshold=0.5)


def test_bad_input_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces_or_skip(SVAMP)
    lines = (TRACES / SVAMP).read_text().splitlines()[:3]
    ungraded = tmp_path / "ungraded.jsonl"
    ungraded.write_text("\n".join(json.dumps({**json.loads(x), "gold": ""}) for x in lines) + "\n")
    for args, message in [
        (["--traces", str(ungraded), "--split", "all"], "without a gold answer"),
        (["--traces", str(tmp_path / "missing.jsonl")], "cannot read traces"),
        (["--traces", str(TRACES / SVAMP), "--seeds", "0"], "must be >= 1"),
    ]:
        assert main(["bench", "peers", *args, "--quick"]) != 0
        assert message in capsys.readouterr().err, args
