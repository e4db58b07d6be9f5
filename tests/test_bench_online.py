"""``dynasor-client bench online``: the CLI's JSON, plot and failures, and the virtual-time simulation
checked against the HTTP replay server in scaled real time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path

import pytest

from dynasor_client import Runtime, as_program
from dynasor_client.algorithms import self_consistency
from dynasor_client.benchmarks import _online_sweep
from dynasor_client.benchmarks._online import (
    POLICIES,
    OnlineConfig,
    OnlineRunError,
    ProgramOutcome,
    RunSpec,
    build_workload,
    crossing_down,
    crossing_up,
    drive,
    interval95,
    measure_base,
    online_table,
    run_online_benchmark,
    simulate,
    slo_floor,
)
from dynasor_client.cli import main
from dynasor_client.traces import TraceQuestion

from .support.replay import TRACES, traces_or_skip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SVAMP = "svamp-codex-sc30.jsonl"
PROFILE = "llama3-8b-h100-80gb"


@pytest.fixture(scope="module")
def svamp() -> list[TraceQuestion]:
    return traces_or_skip(SVAMP)


@pytest.fixture(scope="module")
def quick_run(svamp: list[TraceQuestion], tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Path]:
    out = tmp_path_factory.mktemp("online")
    json_path, plot_path = out / "online.json", out / "online.png"
    argv = ["bench", "online", "--traces", str(TRACES / SVAMP), "--quick", "--json", str(json_path)]
    return main([*argv, "--plot", str(plot_path)]), json_path, plot_path


def test_quick_cli_writes_the_schema_and_a_plot(quick_run: tuple[int, Path, Path]) -> None:
    code, json_path, plot_path = quick_run
    assert code == 0
    data = json.loads(json_path.read_text(encoding="utf-8"))
    for key in ("profile", "traces", "window", "policies", "ratios", "versions", "commit", "machine"):
        assert key in data
    assert data["seeds"] == {"arrivals": 0, "replay": 0}
    assert data["replicates"] == 1 and "intervals" not in data and "by_seed" not in data
    assert data["elapsed_s"] > 0 and data["quick"] is True
    assert data["profile"] == PROFILE and data["traces"] == SVAMP
    assert isinstance(data["window"], int) and data["window"] >= 1
    assert set(data["policies"]) == set(POLICIES)
    assert {"naive", "gang", "ours"} <= set(data["policies"])
    for name, figures in data["policies"].items():
        for key in ("max_rate_at_90", "min_slo_scale_at_90", "accuracy", "latency_mean_s", "latency_p90_s"):
            value = figures[key]
            assert value is None or isinstance(value, float | int), (name, key)
        assert 0 <= figures["accuracy"] <= 1
        # The GPU generated at least what the programs received (and the work they cancelled).
        assert figures["gpu_tokens"] >= figures["tokens"] - 1e-9, name
        assert figures["latency_p90_s"] >= 0 and figures["latency_mean_s"] > 0
        assert figures["curve"] and figures["slo_curve"]
        for point in figures["curve"]:
            assert point["rate"] > 0 and 0 <= point["attainment"] <= 1
        for point in figures["slo_curve"]:
            assert point["slo_scale"] > 0 and 0 <= point["attainment"] <= 1
        # Alone on the idle GPU a program runs fastest: it meets the deadlines it meets under load
        # (up to one program whose timing-dependent choices, such as fitted rounds, came out otherwise).
        alone = {p["slo_scale"]: p["attainment"] for p in figures["alone_slo_curve"]}
        assert set(alone) == {p["slo_scale"] for p in figures["slo_curve"]}
        for point in figures["slo_curve"]:
            assert alone[point["slo_scale"]] >= point["attainment"] - 1 / figures["programs"] - 1e-9, name
        rates = [p["rate"] for p in figures["curve"]]
        assert rates == sorted(rates)
        # Sanity: no policy does better under the heaviest load than under the lightest.
        assert figures["curve"][0]["attainment"] >= figures["curve"][-1]["attainment"], name
        scales = [p["attainment"] for p in figures["slo_curve"]]
        assert scales[-1] >= scales[0], name
        assert set(data["ratios"][name]) == {"rate", "slo_scale"}
    assert data["ratios"]["naive"] == {"rate": 1.0, "slo_scale": 1.0}
    # The deadline is SLO scale x difficulty (>= 1) x naive's latency alone: naive alone meets it at x1.
    assert data["policies"]["naive"]["alone_slo_curve"][0] == {"slo_scale": 1.0, "attainment": 1.0}
    # The floor (each question's shortest sample, alone, at the cost model's least per token) is a
    # bound: it meets every deadline any policy's programs meet alone, and all of them at x1.
    floor = {p["slo_scale"]: p["attainment"] for p in data["slo_floor"]["slo_curve"]}
    assert floor[1.0] == 1.0 and data["slo_floor"]["min_slo_scale_at_90"] <= 1.0
    for name, figures in data["policies"].items():
        for point in figures["alone_slo_curve"]:
            assert floor[point["slo_scale"]] >= point["attainment"] - 1e-9, (name, point)
    # Certaindex spends fewer tokens than sending every sample.
    assert data["policies"]["ours"]["tokens"] < data["policies"]["naive"]["tokens"]
    assert plot_path.stat().st_size > 10_000
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_traces_file_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.jsonl"
    code = main(["bench", "online", "--traces", str(missing), "--quick", "--json", str(tmp_path / "o.json")])
    assert code != 0
    err = capsys.readouterr().err
    assert "cannot read the traces" in err and "nope.jsonl" in err
    assert not (tmp_path / "o.json").exists()


def test_a_malformed_traces_file_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "q1", "question": "?", "gold": "1", "samples": []}\nnot json\n', encoding="utf-8")
    code = main(["bench", "online", "--traces", str(bad), "--quick", "--json", str(tmp_path / "o.json")])
    assert code != 0
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_a_failed_run_is_not_hidden(
    svamp: list[TraceQuestion],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broken(*args: object, **kwargs: object) -> list[ProgramOutcome]:
        raise OnlineRunError("ours at 1/s: program online-0-3 failed: EndpointError: boom")

    monkeypatch.setattr(_online_sweep, "simulate", broken)
    out = tmp_path / "o.json"
    code = main(["bench", "online", "--traces", str(TRACES / SVAMP), "--quick", "--json", str(out)])
    assert code != 0
    err = capsys.readouterr().err
    assert "a benchmark run failed" in err and "boom" in err
    assert not out.exists()


def test_replicates_report_means_paired_ratios_and_intervals(svamp: list[TraceQuestion]) -> None:
    config = OnlineConfig(
        traces=str(TRACES / SVAMP), policies=("naive", "ours"), rate_multiples=(1.0, 2.0),
        slo_scales=(1.0, 2.0), duration_s=2.0, seeds=3, quick=True,
    )  # fmt: skip
    data = run_online_benchmark(config)
    assert data["replicates"] == 3 and data["seeds"] == {"arrivals": 0, "replay": 0}
    runs = data["by_seed"]
    assert [r["seeds"] for r in runs] == [{"arrivals": s, "replay": s} for s in range(3)]
    # Other seeds, other programs: the replicates are not copies of one another.
    assert len({json.dumps(r["policies"]["ours"]["curve"], sort_keys=True) for r in runs}) > 1
    for name in ("naive", "ours"):
        figures, ci = data["policies"][name], data["intervals"][name]
        for key in ("max_rate_at_90", "accuracy", "tokens"):
            values = [r["policies"][name][key] for r in runs]
            assert figures[key] == pytest.approx(sum(values) / 3)
        low, high = ci["max_rate_at_90"]
        assert low <= figures["max_rate_at_90"] <= high
        # Each replicate's ratio is against its own naive run; the headline is their mean.
        per_seed = [
            r["policies"][name]["max_rate_at_90"] / r["policies"]["naive"]["max_rate_at_90"] for r in runs
        ]
        assert data["ratios"][name]["rate"] == pytest.approx(sum(per_seed) / 3)
        rates = [p["rate"] for p in figures["curve"]]
        for point in figures["curve"]:
            seen = [next(q for q in r["policies"][name]["curve"] if q["rate"] == point["rate"]) for r in runs]
            assert point["attainment"] == pytest.approx(sum(q["attainment"] for q in seen) / 3)
        assert rates == sorted(rates) and rates
    assert data["intervals"]["naive"]["rate_ratio"] == (1.0, 1.0)
    assert "means of 3 replicates" in online_table(data) and "±" in online_table(data)


def test_intervals_of_replicates() -> None:
    low, high = interval95([1.0, 2.0, 3.0])
    assert low == pytest.approx(2.0 - 4.302653 / math.sqrt(3)) and high == pytest.approx(
        2.0 + 4.302653 / math.sqrt(3)
    )
    assert interval95([2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in interval95([1.0]))
    assert all(math.isnan(v) for v in interval95([1.0, math.inf]))  # a policy that never kept 90%


def test_zero_replicates_fail_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.json"
    code = main(
        ["bench", "online", "--traces", str(TRACES / SVAMP), "--quick", "--seeds", "0", "--json", str(out)]
    )
    assert code != 0
    assert "seeds (replicates) must be >= 1" in capsys.readouterr().err
    assert not out.exists()


def test_the_slo_floor_bounds_a_measured_single_sample(svamp: list[TraceQuestion]) -> None:
    # Twelve programs: the share of deadlines met by the floor is at least the share met by each
    # program drawing one sample alone on the idle modelled GPU (measured), at every scale.
    questions = svamp[:40]
    programs = build_workload(questions, 12.0, seed=5)[:12]
    base = measure_base(questions, programs, n=30, profile=PROFILE, seed=0)
    programs = [dataclasses.replace(p, base_s=b) for p, b in zip(programs, base, strict=True)]
    one = measure_base(questions, programs, n=1, profile=PROFILE, seed=0)
    config = OnlineConfig(traces=SVAMP, duration_s=1e9)
    scales = [0.2, 0.3, 0.4, 0.5, 0.75, 1.0]
    floor = slo_floor(config, programs, _online_sweep.Grid([1.0], scales, 1.0, 1.0))
    measured = [sum(t <= p.deadline(s) for p, t in zip(programs, one, strict=True)) / 12 for s in scales]
    attained = [p["attainment"] for p in floor["slo_curve"]]
    assert all(f >= m for f, m in zip(attained, measured, strict=True)), (attained, measured)
    assert attained[0] < 1.0 and attained[-1] == 1.0  # informative: some deadlines are out of reach
    assert 0.2 < floor["min_slo_scale_at_90"] <= 1.0


def test_crossings_interpolate() -> None:
    assert crossing_down([1, 2, 3], [1.0, 0.95, 0.85]) == pytest.approx(2.5)
    assert crossing_down([1, 2], [1.0, 0.95]) == 2.0  # never below: the highest rate tried
    assert crossing_down([1, 2], [0.5, 0.1]) == 0.0
    assert crossing_up([1, 2, 4], [0.5, 0.8, 1.0]) == pytest.approx(3.0)
    assert crossing_up([1, 2], [0.95, 1.0]) == 1.0  # never below: the tightest scale tried
    assert math.isinf(crossing_up([1, 2], [0.1, 0.2]))
    # A dip below the target at a loose scale counts: the scan starts from the loosest.
    assert crossing_up([1, 2, 3, 4], [0.95, 0.5, 0.95, 1.0]) == pytest.approx(2 + 0.4 / 0.45)


# ---------------------------------------------------------------------------- against the HTTP server


class StallWatch:
    """Wakes every 10 ms and keeps the longest delay past its wake-up: how long the event loop ran
    nothing else (a GC pass, a blocking call, the process waiting for a core)."""

    def __init__(self) -> None:
        self.longest_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            self.longest_s = max(self.longest_s, loop.time() - due)


def test_the_simulation_matches_the_http_replay_server(svamp: list[TraceQuestion]) -> None:
    """The same programs, seeds and arrivals: in process on the virtual clock, and through a real
    socket to a ReplayServer at time_scale 0.5 (a modelled second takes 0.5 s). Same answers,
    tokens and stop reasons; latencies within a tolerance: the real run adds the CPU time of the
    client and server (about 40 ms a program here, mostly parsing 30 choices with per-token
    logprobs), which the virtual clock does not count. At time_scale 0.1 that CPU time would be
    0.4 modelled s of a 0.5 s latency: the check would be about the CPU, not the timing model."""
    from dynasor_client import Endpoint
    from dynasor_client.replay import ReplayServer

    questions = svamp[:40]
    programs = build_workload(questions, 6.0, seed=3)[:8]
    base = measure_base(questions, programs, n=30, profile=PROFILE, seed=0)
    programs = [dataclasses.replace(p, base_s=b) for p, b in zip(programs, base, strict=True)]
    time_scale = 0.5

    async def over_http(run: RunSpec) -> tuple[list[ProgramOutcome], float]:
        """The programs over HTTP, and the longest stall of the event loop meanwhile (the client and
        the server share it: a stall is time neither of them ran, from GC or a busy machine)."""
        async with (
            ReplayServer(questions, profile=PROFILE, time_scale=time_scale, seed=0) as server,
            Endpoint(
                server.base_url, capabilities=server.capabilities, stream=False, max_in_flight=100_000
            ) as endpoint,
        ):
            # Warm the client up (model lookup, connection, the OpenAI client's lazy imports, the
            # answer checks): in real time a first call's imports would stall every program. A
            # program id of its own: the measured programs' draws are untouched.
            async with Runtime(endpoint, window=None) as runtime:
                await runtime.run(
                    as_program(self_consistency, questions[0].question, n=30), program_id="warm-up"
                )
            # The measured programs start on an idle modelled GPU: whatever the warm-up left running
            # or queued (rounds sent ahead, aborted) is gone and the last iteration has ended.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (m := server.metrics())["running"] or m["waiting"] or m["clock_s"] > server.driver.now():
                assert loop.time() < deadline, f"the replay server is still busy after the warm-up: {m}"
                await asyncio.sleep(0.005)
            watch = StallWatch()
            async with asyncio.TaskGroup() as group:
                watching = group.create_task(watch.run())
                outcomes = await drive(endpoint, programs, run, time_scale=time_scale)
                watching.cancel()
            return outcomes, watch.longest_s

    def timing_errors(real: list[ProgramOutcome], virtual: list[ProgramOutcome]) -> list[str]:
        errors = [
            # Never faster than the model; slower by the CPU time at most (0.1 wall s a program).
            f"program {r.index}: {r.latency_s:.3f} s over HTTP, {v.latency_s:.3f} s modelled"
            for r, v in zip(real, virtual, strict=True)
            if not v.latency_s - 0.01 <= r.latency_s <= v.latency_s + 0.1 / time_scale
        ]
        mean_real = sum(o.latency_s for o in real) / len(real)
        mean_virtual = sum(o.latency_s for o in virtual) / len(virtual)
        if not mean_virtual <= mean_real <= mean_virtual * 1.3:
            errors.append(f"mean latency {mean_real:.3f} s over HTTP, {mean_virtual:.3f} s modelled")
        return errors

    for policy in ("naive", "ours"):
        # Light load and a loose SLO: nothing is cut, so both runs take the same decisions.
        run = RunSpec(policy, 1.0, 20.0, 256, 30, "paper", PROFILE, 1e9, 0)
        virtual = simulate(questions, programs, run)
        assert all(o.stop_reason != "deadline" for o in virtual)
        # The decisions must match on every run. Wall-clock timing on a shared 2-core machine can be
        # disturbed (CI once saw one program 0.65 wall s late), so the latencies get three tries:
        # a timing model that is off fails all three.
        attempts = []
        for _ in range(3):
            real, stall = asyncio.run(over_http(run))
            assert [o.answer for o in real] == [o.answer for o in virtual]
            assert [o.tokens for o in real] == [o.tokens for o in virtual]
            assert [o.stop_reason for o in real] == [o.stop_reason for o in virtual]
            errors = timing_errors(real, virtual)
            if not errors:
                break
            attempts.append(f"longest event-loop stall {stall:.3f} s: " + "; ".join(errors))
        else:
            pytest.fail(f"{policy}: latencies off in three runs:\n" + "\n".join(attempts))
    # The naive program's latency alone is its base latency (the deadlines' unit), exactly.
    alone = simulate(questions, programs[:1], RunSpec("naive", 1.0, 1.0, 256, 30, "paper", PROFILE, 1e9, 0))
    assert alone[0].latency_s == pytest.approx(programs[0].base_s, abs=1e-9)
