"""``bench online`` on a real server: a tiny comparison against the local llama.cpp server (a few
programs), its JSON, and its prediction by the replay engine on the profile fitted to that server.

Speeds are never asserted (the machine is shared): only structure, finiteness and that the tokens the
client counted are the ones the server's own ``/metrics`` counter saw."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from dynasor_client import LocalLlamaServer
from dynasor_client.benchmarks import RealOnlineConfig, real_online_table, run_real_online_benchmark
from dynasor_client.cli import main

QUESTIONS = [
    ("Tom has 5 apples and buys 3 more. How many apples does he have now?", "8"),
    ("Sara had 9 pencils and gave 4 of them to a friend. How many pencils does she have left?", "5"),
    ("There are 6 cookies in a box and Ali puts in 7 more. How many cookies are in the box now?", "13"),
]


def _dataset(tmp_path: Path) -> Path:
    """A GSM8K-shaped dataset file (``question``, ``answer`` ending in ``#### N``)."""
    path = tmp_path / "questions.jsonl"
    rows = [{"question": q, "answer": f"... #### {a}"} for q, a in QUESTIONS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


FIGURES = ("attainment", "latency_mean_s", "tokens", "accuracy", "cut", "server_tokens", "client_tokens")


def _finite(figures: dict[str, Any]) -> None:
    for key in FIGURES:
        assert isinstance(figures[key], int | float) and math.isfinite(figures[key]), (key, figures)
    assert 0 <= figures["attainment"] <= 1
    assert figures["latency_mean_s"] > 0
    assert figures["tokens"] > 0
    assert figures["programs"] == 3


def test_real_server_comparison_beside_its_prediction(local_server: LocalLlamaServer, tmp_path: Path) -> None:
    config = RealOnlineConfig(
        str(_dataset(tmp_path)),
        endpoint=local_server.base_url,
        count=2,
        programs=3,
        n=3,
        max_tokens=24,
        slots=local_server.n_parallel,
        rate_x=1.0,
        probe_batches=(1, 2),
        probe_contexts=(20, 120),
        probe_prefills=(40, 120),
    )
    result = run_real_online_benchmark(config)
    assert result["benchmark"] == "online-real"
    assert set(result["policies"]) == {"naive", "ours"}
    assert result["server"]["model"] == local_server.model
    assert len(result["questions_asked"]) == 2
    profile = result["profile"]
    assert profile["decode_base_s"] + profile["decode_per_seq_s"] > 0
    assert profile["max_batch"] == local_server.n_parallel
    assert len(profile["timing_samples"]) >= 4
    assert math.isfinite(result["capacity_rate"]) and result["capacity_rate"] > 0
    assert all(math.isfinite(v) and v > 0 for v in result["drift"].values())
    assert math.isfinite(result["profile_scale"]) and result["profile_scale"] > 0
    for kind in ("real", "predicted", "predicted_scaled"):
        assert result["base_latency_s"][kind]["mean"] > 0
        for name in ("naive", "ours"):
            figures = result["policies"][name][kind]
            _finite(figures)
            assert [o["index"] for o in figures["outcomes"]] == [0, 1, 2]
            assert sum(o["tokens"] for o in figures["outcomes"]) == figures["client_tokens"]
            assert figures["prefill_tokens"] > 0  # llama.cpp's prompt_tokens_total; the replay's own
    naive = result["policies"]["naive"]
    # Scaled to the latencies alone, the model takes the real latencies alone on average.
    scaled_alone = result["base_latency_s"]["predicted_scaled"]["mean"]
    assert scaled_alone == pytest.approx(result["base_latency_s"]["real"]["mean"], rel=0.05)
    # Naive cancels nothing: every token the server generated reached the client, and the client's
    # count is the server's own (llama.cpp's tokens_predicted_total; the replay's tokens_generated).
    assert naive["real"]["server_tokens"] == naive["real"]["client_tokens"] > 0
    assert naive["predicted"]["server_tokens"] == naive["predicted"]["client_tokens"] > 0
    # Ours may cancel requests it no longer needs: the server then generated at least what was received.
    for kind in ("real", "predicted", "predicted_scaled"):
        ours = result["policies"]["ours"][kind]
        assert ours["server_tokens"] >= ours["client_tokens"] > 0
    table = real_online_table(result)
    assert "predicted" in table and "naive" in table and "ours" in table
    json.dumps(result)  # the JSON the CLI writes


def test_config_errors_are_clear(tmp_path: Path) -> None:
    dataset = str(_dataset(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        RealOnlineConfig(str(tmp_path / "missing.jsonl")).check()
    with pytest.raises(ValueError, match="policies must include 'naive'"):
        RealOnlineConfig(dataset, policies=("ours",)).check()
    with pytest.raises(ValueError, match="programs must be >= 1"):
        RealOnlineConfig(dataset, programs=0).check()
    with pytest.raises(ValueError, match="unknown rule"):
        RealOnlineConfig(dataset, rule="no-such-rule").check()


def test_cli_real_mode_needs_questions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = str(tmp_path / "o.json")
    code = main(["bench", "online", "--endpoint", "http://127.0.0.1:9/v1", "--json", out])
    assert code != 0
    assert "--questions" in capsys.readouterr().err
    code = main(["bench", "online", "--json", out])
    assert code != 0
    assert "--traces" in capsys.readouterr().err
