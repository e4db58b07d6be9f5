"""``dynasor-client demo``: plain self-consistency vs certaindex on the local model, an endpoint and
recorded traces, and its errors."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from dynasor_client import LocalLlamaServer
from dynasor_client.certainty import Observations
from dynasor_client.cli import main
from dynasor_client.demo import demo_rule, generate_questions, is_correct
from dynasor_client.program import StopReason
from tests.support.faulty_server import MODEL_ID, FaultyServer
from tests.support.replay import TRACES, traces_or_skip

SVAMP = "svamp-codex-sc30.jsonl"


def _run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(["demo", "--no-progress", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _table_row(out: str, label: str) -> str:
    rows = [line for line in out.splitlines() if line.startswith(label)]
    assert len(rows) == 1, out
    return rows[0]


def test_questions_are_seeded_distinct_and_answered() -> None:
    questions = generate_questions(40, seed=3)
    assert questions == generate_questions(40, seed=3)
    assert [q.text for q in questions] != [q.text for q in generate_questions(40, seed=4)]
    assert len({q.text for q in questions}) == 40
    for q in questions:
        numbers = [int(x) for x in re.findall(r"\d+", q.text)]
        a, b = numbers
        expected = {"bags": a * b, "buys": a + b, "puts in": a + b, "gave": a - b, "lost": a - b}
        kind = next(k for k in expected if k in q.text)
        assert q.gold == str(expected[kind]), q.text
        assert int(q.gold) > 0
        assert q.messages[-1] == {"role": "user", "content": q.text}
        assert is_correct(f"\\boxed{{{q.gold}}}", q.gold) and is_correct(f"{q.gold}.0", q.gold)
        assert not is_correct(None, q.gold) and not is_correct(str(int(q.gold) + 1), q.gold)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 12, 30])
def test_the_rule_stops_when_certain_and_cuts_when_hopeless(n: int) -> None:
    rule, rounds = demo_rule(n)
    assert sum(rounds) == n and all(r >= 1 for r in rounds)
    detect = rounds[0]

    def reason(labels: list[int]) -> StopReason | None:
        fired = rule.fired(Observations.single(labels))
        return None if fired is None else StopReason(fired)

    if detect < n:
        assert reason([0] * detect) is StopReason.CONFIDENT  # all agree at the detect round
        assert reason(list(range(detect))) is StopReason.HOPELESS  # all differ
        if detect >= 3:
            assert reason([0] * (detect - 1) + [1]) is None  # a near-agreement: sample on
    assert reason([0, 1] * (n // 2) + [0] * (n % 2)) is StopReason.CAP  # never beyond n


@pytest.mark.local_model
def test_demo_on_the_local_model(tmp_path: Path, capsys: Any) -> None:
    out_json, plot = tmp_path / "figures" / "demo.json", tmp_path / "demo.png"
    code, out, err = _run(
        capsys,
        "--questions", "2", "--n", "2", "--max-tokens", "12", "--json", str(out_json), "--plot", str(plot),
    )  # fmt: skip
    assert code == 0, err
    assert "SmolLM2" in out
    _table_row(out, "plain SC (n=2)")
    _table_row(out, "certaindex")
    assert "wall s" in out and "hopeless" in out and "confident" in out
    data = json.loads(out_json.read_text())
    assert data["backend"] == "local" and data["questions"] == 2 and data["n"] == 2
    assert set(data["methods"]) == {"plain", "certaindex"}
    assert data["methods"]["plain"]["samples"] == 4 and data["methods"]["plain"]["tokens"] > 0
    assert len(data["per_question"]) == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in err
    else:
        assert plot.stat().st_size > 1000 and f"plot saved to {plot}" in out


@pytest.mark.local_model
def test_demo_against_an_endpoint(local_server: LocalLlamaServer, tmp_path: Path, capsys: Any) -> None:
    out_json = tmp_path / "demo.json"
    code, out, err = _run(
        capsys,
        "--endpoint", local_server.base_url, "--questions", "2", "--n", "4", "--max-tokens", "12",
        "--json", str(out_json), "--no-plot", "--seed", "5",
    )  # fmt: skip
    assert code == 0, err
    assert "plot" not in out
    data = json.loads(out_json.read_text())
    assert data["backend"] == "endpoint" and data["model"] == local_server.model and data["seed"] == 5
    assert [q["question"] for q in data["per_question"]] == [q.text for q in generate_questions(2, seed=5)]
    plain, certaindex = data["methods"]["plain"], data["methods"]["certaindex"]
    assert plain["samples"] == 8 and plain["stops"]["cap"] == 2
    assert certaindex["samples"] <= 8 and sum(certaindex["stops"].values()) == 2


def test_demo_on_recorded_traces_saves_tokens(tmp_path: Path, capsys: Any) -> None:
    traces_or_skip(SVAMP)
    out_json = tmp_path / "demo.json"
    code, out, err = _run(
        capsys, "--traces", str(TRACES / SVAMP), "--questions", "60", "--json", str(out_json), "--no-plot"
    )
    assert code == 0, err
    assert "GPU s*" in _table_row(out, "method")
    data = json.loads(out_json.read_text())
    plain, certaindex = data["methods"]["plain"], data["methods"]["certaindex"]
    assert data["backend"] == "replay" and data["n"] == 30 and data["questions"] == 60
    assert plain["samples"] == 60 * 30
    assert certaindex["tokens"] < 0.7 * plain["tokens"]  # SVAMP: most questions settle at 5 samples
    assert certaindex["accuracy"] >= plain["accuracy"] - 0.05
    assert certaindex["stops"]["confident"] > 30
    assert certaindex["modelled_gpu_s"] < plain["modelled_gpu_s"]
    for row in data["per_question"]:  # paired: each question drew the same sample order in both
        k = row["certaindex"]["samples"]
        assert row["certaindex"]["answers"] == row["plain"]["answers"][:k]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--traces", "/nonexistent/traces.jsonl"], "traces file not found: /nonexistent/traces.jsonl"),
        (["--endpoint", f"http://127.0.0.1:{_closed_port()}/v1"], "cannot reach the endpoint"),
        (["--n", "1"], "--n must be >= 2"),
        (["--questions", "0", "--endpoint", "http://127.0.0.1:1/v1"], "--questions must be >= 1"),
        (["--model", "m"], "--model and --api-key go with --endpoint"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1"),
    ],
)
def test_bad_input_is_a_clear_error(argv: list[str], message: str, capsys: Any) -> None:
    started = time.monotonic()
    code, _, err = _run(capsys, "--no-plot", *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert time.monotonic() - started < 20  # fails fast: no retries against a dead endpoint


def test_too_many_samples_for_the_traces(capsys: Any) -> None:
    traces_or_skip(SVAMP)
    code, _, err = _run(capsys, "--no-plot", "--traces", str(TRACES / SVAMP), "--n", "31")
    assert code == 2 and "more than the 30 samples recorded" in err


def test_endpoint_and_traces_exclude_each_other(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--endpoint", "http://127.0.0.1:1/v1", "--traces", "x.jsonl"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_demo_against_a_fake_endpoint(faulty_server: FaultyServer, tmp_path: Path, capsys: Any) -> None:
    """The ``ok`` scenario answers every sample alike: certaindex stops every question at the detect round."""
    out_json = tmp_path / "demo.json"
    code, out, err = _run(
        capsys,
        "--endpoint",
        faulty_server.base_url("ok"),
        "--questions",
        "3",
        "--json",
        str(out_json),
        "--no-plot",
    )
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert data["backend"] == "endpoint" and data["model"] == MODEL_ID and data["n"] == 8
    plain, certaindex = data["methods"]["plain"], data["methods"]["certaindex"]
    assert plain["samples"] == 3 * 8 and plain["stops"] == {"confident": 0, "hopeless": 0, "cap": 3}
    assert certaindex["samples"] == 3 * 4 and certaindex["stops"] == {"confident": 3, "hopeless": 0, "cap": 0}
    assert data["saved"] == pytest.approx(0.5)
    assert re.search(r"^certaindex .* 50% ", out, re.MULTILINE), out
    # Every sample is seeded (sample i: --seed + i), so both methods draw the same samples.
    texts = [q.text for q in generate_questions(3, seed=0)]
    bodies = [r.json for r in faulty_server.requests("ok") if any(t in json.dumps(r.json) for t in texts)]
    assert len(bodies) >= 6 and all(isinstance(body.get("seed"), int) for body in bodies)


def test_an_endpoint_that_fails_every_request(faulty_server: FaultyServer, capsys: Any) -> None:
    url = faulty_server.base_url("status-400-100000")
    code, _, err = _run(
        capsys, "--endpoint", url, "--model", "m", "--questions", "2", "--n", "2", "--no-plot"
    )
    assert code == 2
    assert "every question failed" in err and "HTTP 400" in err and "Traceback" not in err


def test_an_endpoint_that_refuses_the_key(faulty_server: FaultyServer, capsys: Any) -> None:
    url = faulty_server.base_url("auth")
    code, _, err = _run(capsys, "--endpoint", url, "--api-key", "bad", "--no-plot")
    assert code == 2 and "refused the API key (HTTP 401)" in err
