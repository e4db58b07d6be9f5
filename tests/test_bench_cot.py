"""``dynasor-client bench cot --quick`` against the local llama.cpp server: every method on the same
questions and seeds, tokens including probes, requests counted per program, the table and the JSON.

SmolLM2-135M's accuracy means nothing here; the test checks the accounting and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynasor_client import LocalLlamaServer
from dynasor_client.benchmarks import COT_METHODS
from dynasor_client.cli import main

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "datasets" / "gsm8k" / "test.jsonl"


def _dataset() -> str:
    if not GSM8K.exists():
        pytest.skip(f"dataset not found: {GSM8K} (the shared data folder is absent)")
    return str(GSM8K)


def test_bench_cot_quick(
    local_server: LocalLlamaServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, lines = tmp_path / "cot.json", tmp_path / "outcomes.jsonl"
    rc = main(["bench", "cot", "--dataset", _dataset(), "--endpoint", local_server.base_url, "--quick",
               "--json", str(out), "--log-outcomes", str(lines)])  # fmt: skip
    assert rc == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    methods = result["config"]["methods"]
    assert {"full", "dynasor", "deer"} <= set(methods) <= set(COT_METHODS)
    assert all(m in table for m in methods)
    logged = [json.loads(line) for line in lines.read_text().splitlines()]
    assert sorted(map(json.dumps, logged)) == sorted(map(json.dumps, result["outcomes"]))  # as they ended
    asked = {(o["question"], o["seed"]) for o in result["outcomes"]}
    assert len(asked) == 2  # --quick: 2 questions, 1 seed
    for method in methods:
        mine = [o for o in result["outcomes"] if o["method"] == method]
        assert {(o["question"], o["seed"]) for o in mine} == asked  # same questions and seeds
        for o in mine:
            assert o["tokens"] == o["generated"] + o["probe"] and o["requests"] >= 1 and o["wall_s"] > 0
        summary = result["summary"][method]
        assert summary["programs"] == 2 and 0 <= summary["accuracy"]["mean"] <= 1
        assert summary["tokens"]["mean"] == pytest.approx(sum(o["tokens"] for o in mine) / 2)
        if method != "full":
            assert set(summary["vs_full"]) == {"accuracy_diff", "token_saving", "wall_saving"}
    for o in result["outcomes"]:
        if o["method"] == "full":  # one request for the chain, one more when its answer was forced
            assert o["requests"] == 1 + int(o["details"]["forced"])
            assert (o["probe"] > 0) == o["details"]["forced"]
        if o["method"] == "dynasor" and not o["details"]["finished"]:  # 32 tokens, a probe per 16
            assert o["probe"] > 0 and o["requests"] >= 3
        if o["method"] in ("dynasor", "dynasor-stream") and "decoding" in o["details"]:
            assert o["details"]["decoding"] == ("chunked" if o["method"] == "dynasor" else "stream")


def test_bench_cot_refuses_bad_settings(tmp_path: Path) -> None:
    assert main(["bench", "cot", "--dataset", str(tmp_path / "none.jsonl"), "--quick"]) == 2
    assert main(["bench", "cot", "--dataset", _dataset(), "--window", "0"]) == 2
    assert main(["bench", "cot", "--quick"]) == 2  # neither --dataset nor --traces
