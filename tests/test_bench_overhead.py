"""``dynasor-client bench overhead``: a quick run writes the JSON schema with plausible figures.

Nothing here is timed against a goal: the machines running tests are too noisy for that.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynasor_client.benchmarks import measure_scheduler, measure_waiting_memory
from dynasor_client.cli import main


def test_quick_run_writes_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"
    assert main(["bench", "overhead", "--quick", "--programs", "600", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "client overhead ratio (non-streaming)" in printed
    assert "scheduler decision p50 (600 queued)" in printed
    data = json.loads(out.read_text())

    assert isinstance(data["client_overhead_ratio"], float) and data["client_overhead_ratio"] > 0
    assert isinstance(data["client_overhead_ratio_streaming"], float)
    assert data["client_overhead_ratio_streaming"] > 0
    assert data["scheduler_decision_p50_us"] > 0
    assert data["scheduler_decision_p99_us"] >= data["scheduler_decision_p50_us"]
    assert data["programs"] == 600
    assert data["bytes_per_waiting_program"] > 0
    assert set(data["meets_goals"]) == {"client_overhead_ratio", "scheduler_decision_p50_us"}
    assert data["goals"] == {"client_overhead_ratio": 1.15, "scheduler_decision_p50_us": 50.0}

    modes = data["client"]["modes"]
    assert set(modes) == {"baseline", "runtime", "baseline_stream", "runtime_stream"}
    for mode in modes.values():
        assert mode["cpu_us_per_request"] > 0 and len(mode["cpu_us_per_request_runs"]) == 1
    assert modes["baseline"]["chunks_per_request"] == 1.0  # one JSON body per request
    assert modes["baseline_stream"]["chunks_per_request"] > 1  # a chunk per token (and the usage one)
    assert data["client"]["server_flush_interval_s"] == 0.0
    assert data["scheduler"]["queued"] == 600 and data["memory"]["waiting"] == 600
    assert data["settings"]["quick"] is True
    assert {"versions", "commit", "machine", "elapsed_s"} <= set(data)
    assert "openai" in data["versions"]


def test_scheduler_and_memory_on_their_own() -> None:
    figures = measure_scheduler(300, decisions=500, window=8)
    assert figures["queued"] == 300 and figures["decisions"] == 500
    assert 0 < figures["p50_us"] <= figures["p90_us"] <= figures["p99_us"]
    memory = measure_waiting_memory(200)
    assert memory["waiting"] == 200
    assert memory["bytes_per_program_tracemalloc"] > 0


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "overhead", "--requests", "0"]) == 2
    assert "--requests must be >= 1" in capsys.readouterr().err
