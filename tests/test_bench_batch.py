"""``dynasor-client bench batch``: the JSON it writes, its refusals and failures, and that its replayed
figures equal those of the full stack (self-consistency over HTTP against the replay server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dynasor_client.algorithms import self_consistency
from dynasor_client.benchmarks import (
    Method,
    calibration_overlap,
    method_stops,
    replay_in_orders,
    with_extracted_answers,
)
from dynasor_client.calibration import label_traces, published_rules
from dynasor_client.certainty import cap, cluster_answers, default_rule
from dynasor_client.cli import main
from dynasor_client.program import StandaloneContext
from dynasor_client.replay import ReplayEngine
from dynasor_client.traces import TraceQuestion, select_split, split_of
from tests.support.replay import TRACES, replay_endpoint, traces_or_skip

SVAMP = "svamp-codex-sc30.jsonl"
LOGPROBS = "gsm8k-qwen25coder05b-sc8-logprobs.jsonl"
METHOD_KEYS = {"accuracy", "accuracy_ci95", "tokens", "rounds", "saved", "oracle_share"}


def _run(tmp_path: Path, *args: str, name: str = SVAMP) -> tuple[int, dict[str, Any] | None]:
    traces_or_skip(name)
    out = tmp_path / "out.json"
    rc = main(
        ["bench", "batch", "--traces", str(TRACES / name), "--algorithm", "sc", "--json", str(out), *args]
    )
    return rc, json.loads(out.read_text()) if out.exists() else None


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    rc, data = _run(tmp_path_factory.mktemp("quick"), "--quick")
    assert rc == 0 and data is not None
    return data


def test_quick_run_writes_the_documented_json(quick: dict[str, Any]) -> None:
    for key, kind in {
        "traces": str,
        "questions": int,
        "cap": int,
        "seeds": int,
        "split": str,
        "baseline": dict,
        "methods": dict,
        "uniform_curve": list,
        "versions": dict,
        "machine": dict,
        "elapsed_s": float,
    }.items():
        assert isinstance(quick[key], kind), key
    assert quick["traces"] == SVAMP and quick["split"] == "test" and quick["cap"] == 30
    assert quick["questions"] == 40 and quick["seeds"] == 4
    assert quick["commit"] is None or len(quick["commit"]) == 40
    assert {"python", "numpy", "dynasor_client"} <= set(quick["versions"])
    expected = {
        "baseline",
        "dynasor-threshold",
        "dynasor-multistep",
        "dynasor-curvefit",
        "dynasor-dynamic-curvefit",
        "adaptive-consistency",
        "esc",
        "its-hub-adaptive",
        "ours",
        "oracle",
    }
    assert set(quick["methods"]) == expected  # no logprobs in these traces: those methods are skipped
    assert any("no token logprobs" in note for note in quick["notes"])
    for name, figures in quick["methods"].items():
        assert set(figures) >= METHOD_KEYS, name
        lo, hi = figures["accuracy_ci95"]
        assert 0.0 <= lo <= hi <= 1.0 and 0.0 <= figures["accuracy"] <= 1.0, name
        assert figures["tokens"] > 0 and 1.0 <= figures["rounds"] <= 30.0, name
    assert [c["k"] for c in quick["uniform_curve"]] == list(range(1, 31))
    assert all(set(c) >= {"k", "accuracy", "tokens"} for c in quick["uniform_curve"])
    # ours is the default rule, calibrated on SVAMP train: the test split is out of sample
    assert quick["ours"]["source"] == "default_rule()" and quick["ours"]["in_sample"] is False
    assert "train" in quick["ours"]["calibrated_on"]


def test_quick_run_numbers_are_consistent(quick: dict[str, Any]) -> None:
    methods, base = quick["methods"], quick["baseline"]
    top = quick["uniform_curve"][-1]
    assert (top["accuracy"], top["tokens"]) == (base["accuracy"], base["tokens"])  # uniform at cap
    assert methods["baseline"]["accuracy"] == base["accuracy"] and methods["baseline"]["saved"] == 0.0
    tokens = [c["tokens"] for c in quick["uniform_curve"]]
    assert tokens == sorted(tokens)
    oracle = methods["oracle"]
    assert oracle["accuracy"] == base["accuracy"]  # it reaches the full-budget answer, by definition
    assert oracle["oracle_share"] == 1.0 and oracle["rounds"] == 1.0
    for name, figures in methods.items():
        assert figures["saved"] <= oracle["saved"], name
        assert figures["saved"] == pytest.approx(1 - figures["tokens"] / base["tokens"]), name
        assert figures["oracle_share"] == pytest.approx(figures["saved"] / oracle["saved"]), name


def test_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rc, _ = _run(tmp_path, "--quick", "--plot", str(tmp_path / "plot.png"))
    assert rc == 0
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_logprob_methods_on_the_small_file(tmp_path: Path) -> None:
    rc, data = _run(tmp_path, "--split", "all", "--cap", "8", name=LOGPROBS)
    assert rc == 0 and data is not None
    assert {"mean-logprob", "deepconf"} <= set(data["methods"])
    assert data["cap"] == 8 and data["questions"] == 8
    assert data["reference"]["in_sample"] is True  # --split all: the variants are fitted in-sample
    assert any("in-sample" in note for note in data["notes"])
    assert data["ours"]["in_sample"] is False  # the default rule saw SVAMP, not these questions


def _rule_file(tmp_path: Path, fitted_on: dict[str, Any]) -> Path:
    path = tmp_path / "calib.json"
    path.write_text(
        json.dumps({"format": "dynasor-rule/1", "rule": default_rule().to_dict(), "fitted_on": fitted_on})
    )
    return path


def test_calibration_on_the_evaluated_questions_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    calib = _rule_file(tmp_path, {"traces": SVAMP, "split": "train"})
    rc, data = _run(tmp_path, "--quick", "--split", "train", "--calibration", str(calib))
    assert rc == 2 and data is None
    err = capsys.readouterr().err
    assert "calibrated on svamp-codex-sc30.jsonl train" in err and "--split test" in err
    # by question id: one evaluated (test) question among them is enough
    test_id = next(q.id for q in traces_or_skip(SVAMP) if split_of(q.id) == "test")
    calib = _rule_file(tmp_path, {"traces": "other.jsonl", "question_ids": ["x", test_id]})
    rc, _ = _run(tmp_path, "--quick", "--calibration", str(calib))
    assert rc == 2
    # calibrated on train, evaluated on test: accepted
    calib = _rule_file(tmp_path, {"traces": SVAMP, "split": "train", "questions": 413})
    rc, data = _run(tmp_path, "--quick", "--calibration", str(calib))
    assert rc == 0 and data is not None
    assert data["ours"] == {
        "source": str(calib),
        "calibrated_on": f"{SVAMP} train (413 questions)",
        "in_sample": False,
    }


def test_calibration_overlap_rules() -> None:
    ids = ["svamp-1", "svamp-2"]
    same = {"traces_name": SVAMP, "traces_sha256": "abc", "evaluated_ids": ids}
    assert calibration_overlap({"question_ids": ["svamp-2"]}, **same)[0] is True
    assert calibration_overlap({"question_ids": ["svamp-3"], "split": "all"}, **same)[0] is False
    assert calibration_overlap({"traces": SVAMP, "split": "all"}, **same)[0] is True
    assert calibration_overlap({"sha256": "abc", "split": "all"}, **same)[0] is True
    for split in ("train", "test"):  # by the recorded split and test fraction, recomputed per id
        expected = any(split_of(q, 0.5) == split for q in ids)
        assert (
            calibration_overlap({"traces": SVAMP, "split": split, "test_fraction": 0.5}, **same)[0]
            is expected
        )
    assert calibration_overlap({"traces": "math.jsonl", "split": "all"}, **same)[0] is False
    assert calibration_overlap({"traces": SVAMP}, **same)[0] is None  # no split recorded
    assert calibration_overlap({}, **same)[0] is None


def test_failed_runs_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    traces_or_skip(SVAMP)
    out = tmp_path / "out.json"
    args = ["bench", "batch", "--algorithm", "sc", "--json", str(out)]
    assert main([*args, "--traces", str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read traces" in capsys.readouterr().err and not out.exists()
    svamp = ["--traces", str(TRACES / SVAMP), "--quick"]
    assert main([*args, *svamp, "--calibration", str(tmp_path / "missing.json")]) == 2
    assert "--calibration" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main([*args, *svamp, "--plot", str(blocker / "plot.png")]) == 2  # the plot cannot be written
    assert "plot failed" in capsys.readouterr().err
    assert out.exists()  # the figures were written before the plot failed
    with pytest.raises(SystemExit):
        main([*args, *svamp, "--algorithm", "best-of-n"])


# -- the same numbers as the full stack --------------------------------------------------------------------


def test_replay_in_orders_replays_the_order_given() -> None:
    questions = select_split(traces_or_skip(SVAMP), "test")[:3]
    labelled = label_traces(questions)
    orders = [list(range(29, -1, -1)), [3, 1, 4, 15, 9, 2, 6], list(range(30))]
    replay = replay_in_orders(labelled, orders, cap=10)
    assert replay.rows == 3 and replay.cap == 10
    for q, order in enumerate(orders):
        full = order + [i for i in range(30) if i not in order]
        assert np.array_equal(replay.obs.labels[q], labelled.labels[q, full[:10]])
        assert np.array_equal(replay.obs.tokens[q], labelled.tokens[q, full[:10]])
    with pytest.raises(ValueError, match="distinct"):
        replay_in_orders(labelled, [[1, 1], [0], [0]], cap=2)


def _agreement(question: TraceQuestion) -> int:
    labels = cluster_answers([s.answer for s in question.samples])
    return max(labels.count(label) for label in set(labels) if label >= 0)


async def test_replayed_figures_equal_the_full_stack_over_http() -> None:
    """A few questions, each method, the replay server's sample order: the benchmark's replay gives the
    same answers, correctness, tokens, samples and rounds as self-consistency run over HTTP.

    The benchmark votes with the answers a live program extracts (``--answers extracted``): for
    samples whose program failed to run the recording has no answer, but the live extractor's
    last-number fallback finds one (svamp-16 has such a sample).
    """
    served = select_split(traces_or_skip(SVAMP), "test")[:30]
    settled = [q for q in served if _agreement(q) >= 28][:2]
    split = [q for q in served if _agreement(q) <= 22][:3]
    chosen = settled + split
    assert len(chosen) == 5
    n, seed = 30, 5
    published = published_rules(n)
    rules = {
        "ours": cap(n) | default_rule(),
        "dynasor-threshold": cap(n) | published["paper_static"],
        "adaptive-consistency": cap(n) | published["adaptive_consistency"],
        "esc": cap(n) | published["esc"],
        "baseline": cap(n),
    }
    engine = ReplayEngine(served, seed=seed)  # the server's draws depend only on seed, program, question
    index = {q.id: i for i, q in enumerate(served)}
    extracted, changed = with_extracted_answers(chosen)
    assert changed > 0  # the case above is among them
    labelled = label_traces(extracted)
    compared = 0
    async with replay_endpoint(served, seed=seed) as endpoint:
        for name, rule in rules.items():
            programs = [f"bench-{name}-{q.id}" for q in chosen]
            orders = [
                engine.draw_order(ReplayEngine.program_name(None, pid, None)[0], index[q.id], n)
                for pid, q in zip(programs, chosen, strict=True)
            ]
            replay = replay_in_orders(labelled, orders, cap=n)
            stop, rounds = method_stops(replay, Method(name, rule, ""))
            for row, (pid, q) in enumerate(zip(programs, chosen, strict=True)):
                context = StandaloneContext(endpoint, rule, program_id=pid)
                result = await self_consistency(q.question, context=context, rule=rule, n=n, rounds="auto")
                where = f"{name} on {q.id}"
                k = int(replay.counts[row, stop[row]])
                assert len(result.answers) == k, where
                recorded = [extracted[row].samples[i].answer for i in orders[row][:k]]
                for got, answer in zip(result.answers, recorded, strict=True):  # the same samples, in order
                    assert cluster_answers([got, answer]) in ([0, 0], [-1, -1]), where
                assert result.tokens.generated == int(replay.spent[row, stop[row]]), where
                assert result.steps == int(rounds[row]), where
                live_correct = (
                    result.answer is not None and len(set(cluster_answers([q.gold, result.answer]))) == 1
                )
                assert live_correct == bool(replay.correct[row, stop[row]]), where
                compared += 1
    assert compared == len(rules) * len(chosen)


async def test_a_tied_vote_is_broken_the_same_way() -> None:
    served = select_split(traces_or_skip(SVAMP), "test")
    extracted, _ = with_extracted_answers(served)
    q = next(i for i, question in enumerate(served) if question.id == "svamp-814")  # 15 vs 15 answers
    labelled = label_traces(extracted[q : q + 1])
    engine, seed, n = ReplayEngine(served, seed=5), 5, 30
    for p in range(50):  # a sample order in which the two tie rules disagree
        pid = f"tie-{p}"
        order = engine.draw_order(ReplayEngine.program_name(None, pid, None)[0], q, n)
        labels = [int(x) for x in labelled.labels[0, order] if x >= 0]
        first_seen = labels[0]  # both classes reach 15: the class seen first ...
        reached_first = labels[[labels[: i + 1].count(x) for i, x in enumerate(labels)].index(15)]
        if first_seen != reached_first:  # ... or the one that reached 15 first
            break
    else:
        pytest.skip("no order with disagreeing tie rules")
    replay = replay_in_orders(labelled, [order], cap=n)
    stop, _ = method_stops(replay, Method("baseline", cap(n), ""))
    async with replay_endpoint(served, seed=seed) as endpoint:
        context = StandaloneContext(endpoint, cap(n), program_id=pid)
        result = await self_consistency(served[q].question, context=context, rule=cap(n), n=n, rounds="auto")
    assert result.answer is not None
    live_correct = len(set(cluster_answers([served[q].gold, result.answer]))) == 1
    assert live_correct == bool(replay.correct[0, stop[0]])
