"""``dynasor-client bench proxy``: a quick run writes the JSON schema with finite figures; the
proxy's upstream transport is sized to its window (``proxy._pool``; its behaviour:
tests/test_proxy_relay.py).

Nothing here is timed against a goal: the machines running tests are too noisy for that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from dynasor_client.cli import main
from dynasor_client.proxy._pool import upstream_transport


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_quick_run_writes_the_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "proxy.json"
    assert main(["bench", "proxy", "--quick", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "goal throughput_ratio_at_200" in printed and "goal added_p50_ms_at_1" in printed
    assert "aborted streams" in printed
    data = json.loads(out.read_text())

    assert {"versions", "commit", "machine", "elapsed_s", "settings", "runs", "aborts", "goals"} <= set(data)
    assert {"httpx", "httpcore", "uvicorn"} <= set(data["versions"])
    assert data["settings"]["quick"] is True and data["settings"]["streams"] == [1, 8]
    assert [run["streams"] for run in data["runs"]] == [1, 8]
    for run in data["runs"]:
        for target in ("direct", "proxy"):
            figures = run[target]
            assert figures["failed"] == 0
            assert figures["requests"] > 0 and _finite(figures["requests_per_s"])
            assert figures["requests_per_s"] > 0
            latency = figures["latency_ms"]
            assert _finite(latency["p50"]) and _finite(latency["p99"]) and _finite(latency["mean"])
            assert 0 < latency["p50"] <= latency["p99"]
            assert _finite(figures["ttfb_ms"]["p50"])
            cpu = figures["cpu_ms_per_request"]
            assert set(cpu) == ({"client", "replay"} if target == "direct" else {"client", "replay", "proxy"})
            assert all(_finite(v) and v >= 0 for v in cpu.values())
        assert _finite(run["throughput_ratio"]) and run["throughput_ratio"] > 0
        assert _finite(run["added_latency_ms"]["p50"]) and _finite(run["added_latency_ms"]["p99"])

    aborts = data["aborts"]
    assert aborts["requests"] == 50 and aborts["reached_stream"] > 0
    assert _finite(aborts["rss_mib_before"]) and _finite(aborts["rss_mib_after"])
    assert aborts["running_after"] == 0  # every dropped stream's run ended

    goals = data["goals"]
    assert goals["throughput_ratio_at_200"]["met"] is None  # quick: no run at 200 streams
    assert goals["added_p50_ms_at_1"]["met"] in (True, False)
    assert _finite(goals["added_p50_ms_at_1"]["value"])


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "proxy", "--streams", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_the_upstream_transport_keeps_a_window_of_connections() -> None:
    assert upstream_transport(8).keep_alive == 16
    assert upstream_transport(500).keep_alive == 500
