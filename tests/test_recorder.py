"""``dynasor-client record`` against the real llama.cpp server with SmolLM2-135M-Instruct.

The model is tiny and weak: these tests check the mechanics (format, logprobs, probes, resuming,
errors), never accuracy. Samples are kept short so the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dynasor_client import Capabilities, Endpoint, LocalLlamaServer
from dynasor_client.cli import main
from dynasor_client.traces import (
    DatasetError,
    DatasetItem,
    RecordError,
    RecordOptions,
    load_dataset,
    load_traces,
    question_seed,
    record,
)
from tests.support.llama import IgnoreEos

DATASETS = Path(__file__).parents[1].parent / "shared" / "data" / "datasets"
GSM8K = DATASETS / "gsm8k" / "test.jsonl"
needs_data = pytest.mark.skipif(
    not GSM8K.is_file(), reason=f"datasets not found: {DATASETS} (the shared data folder is absent)"
)
CLI = [sys.executable, "-m", "dynasor_client"]
QUICK = {"samples": 2, "max_tokens": 16, "progress": False}


def _env() -> dict[str, str]:
    src = str(Path(__file__).parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture
async def full_length_endpoint(
    local_server: LocalLlamaServer, local_capabilities: Capabilities
) -> AsyncIterator[Endpoint]:
    """The local server, every sample generated to its max_tokens."""
    async with Endpoint(
        local_server.base_url, capabilities=local_capabilities, timeout=60, transport=IgnoreEos()
    ) as endpoint:
        yield endpoint


# ------------------------------------------------------------------------------------ datasets


@needs_data
def test_loads_every_shared_dataset_shape() -> None:
    expected = {
        "gsm8k": ("gsm8k-0", "18"),
        "math500": ("test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        "aime24": ("aime24-60", "204"),
        "amc23": ("amc23-0", "27"),
        "svamp": ("chal-777", "145"),
        "asdiv": ("asdiv-0", "9"),
    }
    for name, (first_id, first_gold) in expected.items():
        items = load_dataset(DATASETS / name / "test.jsonl")
        assert (items[0].id, items[0].gold) == (first_id, first_gold), name
        assert len({i.id for i in items}) == len(items)
        assert all(i.question.strip() for i in items)
    svamp = load_dataset(DATASETS / "svamp" / "test.jsonl")[0].question
    assert svamp.startswith("There are 87 oranges") and svamp.endswith("How big is each group of bananas?")
    gsm8k = load_dataset(GSM8K)
    assert "," not in "".join(i.gold for i in gsm8k)  # "#### 2,125" -> "2125"


def test_bad_datasets_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "missing.jsonl")
    shapeless = tmp_path / "odd.jsonl"
    shapeless.write_text('{"prompt": "hi", "label": 1}\n')
    with pytest.raises(DatasetError, match=r"odd\.jsonl:1: unknown dataset shape.*known shapes"):
        load_dataset(shapeless)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "a", "answer": "#### 1"}\n{"question": \n')
    with pytest.raises(DatasetError, match=r"broken\.jsonl:2: not a JSON line"):
        load_dataset(broken)
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"id": "a", "problem": "p", "answer": 1}\n{"id": "a", "problem": "q", "answer": 2}\n')
    with pytest.raises(DatasetError, match="appears twice"):
        load_dataset(twice)
    with pytest.raises(ValueError, match="samples"):
        RecordOptions(samples=0)


def test_seeds_are_stable_and_distinct() -> None:
    assert question_seed(0, "gsm8k-1") == question_seed(0, "gsm8k-1")
    assert len({question_seed(0, f"q{i}") for i in range(100)} | {question_seed(1, "q0")}) == 101
    assert all(0 <= question_seed(s, "x") < 2**30 for s in range(50))


def test_cli_reports_bad_input_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["record", "--endpoint", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "out.jsonl")]
    assert main([*base, "--dataset", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "hi"}\n')
    assert main([*base, "--dataset", str(odd)]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset shape" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------ recording


@needs_data
async def test_records_samples_with_logprobs(full_length_endpoint: Endpoint, tmp_path: Path) -> None:
    items = load_dataset(GSM8K)[:3]
    out = tmp_path / "traces.jsonl"
    summary = await record(full_length_endpoint, items, out, **QUICK, top_logprobs=3)
    assert (summary.recorded, summary.already_recorded, summary.skipped) == (3, 0, ())
    traces = load_traces(out)
    assert sorted(q.id for q in traces) == sorted(i.id for i in items)
    golds = {i.id: i.gold for i in items}
    for q in traces:
        assert q.gold == golds[q.id]
        assert q.prompt_tokens is not None and q.prompt_tokens > 10
        assert q.source is not None and "smollm2" in q.source and "temperature 0.7" in q.source
        assert q.system is not None and "boxed" in q.system
        assert len(q.samples) == 2
        for s in q.samples:
            assert s.text and s.num_tokens == 16 and s.finish_reason == "length"
            assert s.token_logprobs is not None and len(s.token_logprobs) == s.num_tokens
            assert s.top_logprobs is not None and len(s.top_logprobs) == s.num_tokens
            assert all(1 <= len(top) <= 3 for top in s.top_logprobs)
            assert s.answer is None or isinstance(s.answer, str)
            assert isinstance(s.correct, bool) and (s.answer is not None or not s.correct)
            assert s.probes is None
    assert summary.tokens == sum(s.num_tokens for q in traces for s in q.samples)


@needs_data
async def test_probes_every_t_tokens(full_length_endpoint: Endpoint, tmp_path: Path) -> None:
    items = load_dataset(GSM8K)[:1]
    out = tmp_path / "probed.jsonl"
    summary = await record(full_length_endpoint, items, out, **{**QUICK, "max_tokens": 24}, probe_every=8)
    (question,) = load_traces(out)
    assert question.prompt_tokens is not None and question.prompt_tokens > 10
    probes = 0
    for s in question.samples:
        assert s.token_logprobs is not None and len(s.token_logprobs) == s.num_tokens
        assert s.probes is not None and s.num_tokens == 24
        assert [offset for offset, _ in s.probes] == [8, 16]  # after each chunk that left it unfinished
        assert all(answer is None or isinstance(answer, str) for _, answer in s.probes)
        probes += len(s.probes)
    assert summary.probes == probes == 4


@needs_data
async def test_resumes_after_interruption_and_crash(local_endpoint: Endpoint, tmp_path: Path) -> None:
    items = load_dataset(GSM8K)[:3]
    out = tmp_path / "resumed.jsonl"
    options = RecordOptions(samples=2, max_tokens=16, concurrency=1, progress=False)
    task = asyncio.create_task(record(local_endpoint, items, out, options))
    deadline = asyncio.get_running_loop().time() + 60
    while not (out.exists() and out.read_bytes().count(b"\n") >= 1):
        assert not task.done(), "the recording ended before it was interrupted"
        assert asyncio.get_running_loop().time() < deadline, "no question recorded within 60 s"
        await asyncio.sleep(0.02)
    task.cancel()  # what Ctrl-C does to the CLI
    with pytest.raises(asyncio.CancelledError):
        await task
    before = _lines(out)
    assert 1 <= len(before) < 3 and all(line.endswith(b"\n") for line in before)

    summary = await record(local_endpoint, items, out, options)
    assert summary.already_recorded == len(before) and summary.recorded == 3 - len(before)
    after = _lines(out)
    assert after[: len(before)] == before  # earlier lines untouched, byte for byte
    ids = [q.id for q in load_traces(out)]
    assert sorted(ids) == sorted(i.id for i in items)

    # A crash in the middle of writing a line: the rest of it is dropped, the question recorded again.
    out.write_bytes(b"".join(after[:2]) + after[2][: len(after[2]) // 2])
    summary = await record(local_endpoint, items, out, options)
    assert (summary.recorded, summary.already_recorded) == (1, 2)
    final = _lines(out)
    assert final[:2] == after[:2] and len(final) == 3
    assert sorted(q.id for q in load_traces(out)) == sorted(ids)

    # Resuming with another number of samples, or into a file that is not traces, is refused.
    with pytest.raises(RecordError, match="pass the same --samples"):
        await record(local_endpoint, items, out, options, samples=3)
    other = tmp_path / "notes.jsonl"
    other.write_text('{"hello": 1}\n')
    with pytest.raises(RecordError, match="not a trace line"):
        await record(local_endpoint, items, other, options)
    assert other.read_text() == '{"hello": 1}\n'


async def test_skips_a_question_too_long_for_the_context(local_endpoint: Endpoint, tmp_path: Path) -> None:
    items = [
        DatasetItem("short", "What is 2 + 3?", "5"),
        DatasetItem("huge", "Add these numbers: " + " + ".join(["7"] * 1500), "10500"),
    ]
    out = tmp_path / "skip.jsonl"
    summary = await record(local_endpoint, items, out, samples=1, max_tokens=8, progress=False)
    assert summary.skipped == ("huge",) and summary.recorded == 1
    assert [q.id for q in load_traces(out)] == ["short"]


@needs_data
def test_cli_records_end_to_end(local_server: LocalLlamaServer, tmp_path: Path) -> None:
    out = tmp_path / "cli.jsonl"
    args = [
        *CLI,
        "record",
        "--endpoint",
        local_server.base_url,
        "--dataset",
        str(GSM8K),
        "--out",
        str(out),
        "--limit",
        "2",
        "--samples",
        "2",
        "--max-tokens",
        "16",
        "--top-logprobs",
        "2",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "recorded 2 questions" in done.stdout
    traces = load_traces(out)
    assert [len(q.samples) for q in traces] == [2, 2]
    assert all(s.top_logprobs is not None for q in traces for s in q.samples)
    # Run again: nothing left to do, nothing written.
    before = out.read_bytes()
    again = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "recorded 0 questions" in again.stdout and "2 of 2 questions were already there" in again.stdout
    assert out.read_bytes() == before
    assert json.loads(before.splitlines()[0])["samples"][0]["num_tokens"] <= 16


async def test_refuses_a_file_another_recorder_holds(tmp_path: Path) -> None:
    from dynasor_client.traces._recorder import _locked

    out = tmp_path / "busy.jsonl"
    items = [DatasetItem("q", "What is 2 + 3?", "5")]
    async with Endpoint("http://127.0.0.1:9/v1", model="m") as endpoint:  # never contacted
        with _locked(out), pytest.raises(RecordError, match="another process is recording"):
            await record(endpoint, items, out, samples=1, progress=False)
