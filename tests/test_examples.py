"""The README's application example, run as written, and the scripts of ``examples/`` in quick mode,
each a subprocess against the local llama.cpp server (``OPENAI_BASE_URL``), as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynasor_client import LocalLlamaServer, StopReason

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TRACES = ROOT.parent / "shared" / "data" / "traces"
REASONS = "|".join(r.value for r in StopReason)


def readme_block(heading: str) -> str:
    """The first ```python block under ``heading`` in README.md, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") :]
    match = re.search(r"```python\n(.*?)```\n", section, re.S)
    assert match is not None, f"no python block under {heading!r}"
    return match.group(1)


class Example:
    """One script started as a subprocess in its own folder, quick mode, against the local server."""

    def __init__(self, script: Path, folder: Path, server: LocalLlamaServer, *args: str) -> None:
        self.folder = folder
        env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "DYNASOR_EXAMPLE_QUICK": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def output(self) -> str:
        """Its stdout, once it ended (it must succeed)."""
        try:
            out, err = self.process.communicate(timeout=300)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.communicate()
        assert self.process.returncode == 0, f"exited {self.process.returncode}:\n{out}\n{err[-4000:]}"
        assert "Traceback" not in err, err[-4000:]
        return out


@pytest.fixture(scope="module")
def examples(
    local_server: LocalLlamaServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Example]]:
    """All four started at once: most of their time is the model's, and it serves them together."""
    folders = {name: tmp_path_factory.mktemp(name) for name in ("readme", "application", "notebook", "agent")}
    readme = folders["readme"] / "app.py"
    readme.write_text(readme_block("## Use it in an application"), encoding="utf-8")
    started = {
        "readme": Example(readme, folders["readme"], local_server),
        "application": Example(
            EXAMPLES / "application.py", folders["application"], local_server, "--out", "saved.jsonl"
        ),
        "notebook": Example(EXAMPLES / "notebook.py", folders["notebook"], local_server),
        "agent": Example(EXAMPLES / "agent_pipeline.py", folders["agent"], local_server),
    }
    yield started
    for example in started.values():
        if example.process.poll() is None:
            example.process.kill()
            example.process.communicate()


def test_readme_application_example(examples: dict[str, Example]) -> None:
    out = examples["readme"].output().splitlines()
    # An answer may hold spaces ("48 apples"); the model decides what it writes.
    shown = re.compile(rf"(no answer|.+?) \(({REASONS})(, partial)?, confidence [01]\.\d\d\)")
    assert shown.match(out[0]) and out[0].endswith(" tokens")  # one program alone
    answers = [line for line in out if " -> " in line]
    assert len(answers) == 3 and all(shown.search(line) for line in answers)  # the batch, in order
    assert [line.split()[0] for line in answers] == ["Tom", "Sara", "Ali"]
    assert any(line.startswith("outcomes") for line in out)  # the summary
    assert shown.match(out[-1])  # the program with a deadline: its stop reason always shown
    if "deadline" in out[-1]:
        assert ", partial" in out[-1]


def test_application_example(examples: dict[str, Example]) -> None:
    out = examples["application"].output()
    saved_to = examples["application"].folder / "saved.jsonl"
    saved = [json.loads(line) for line in saved_to.read_text().splitlines()]
    assert sorted(record["index"] for record in saved) == [0, 1, 2]  # --quick: three questions
    for record in saved:  # the floor: no answer below 0.5, the vote kept aside
        abstained, details = record["abstained"], record["details"]
        assert record["answer"] is None or record["confidence"] >= 0.5
        # Abstaining is refusing an answer the samples held; samples that held none abstain from nothing.
        assert abstained == ("unconfident_answer" in details)
        assert not abstained or (record["answer"] is None and record["confidence"] < 0.5)
    assert "3 of 3 finished" in out and out.count("confidence ") == 3


def test_notebook_example(examples: dict[str, Example]) -> None:
    # On the recorded traces through the replay engine when they are here, else live.
    out = examples["notebook"].output()
    lines = [line for line in out.splitlines() if " right, " in line]
    assert [line.split()[0] for line in lines] == ["uniform", "certaindex"]
    assert "certaindex saved" in out and "stopped: " in out
    if (TRACES / "svamp-codex-sc30.jsonl").exists():
        assert "replaying" in out and "30.0 samples/question" in lines[0]


def test_agent_pipeline_example(examples: dict[str, Example]) -> None:
    out = examples["agent"].output()
    steps = [line.split(" ", 1)[0] for line in out.splitlines() if line[:2] in ("1.", "2.", "3.", "4.")]
    assert steps == ["1.", "2.", "3.", "4."], out
    assert re.search(r"2\. sc, n=3: answer .*, stopped \w+ after \d samples", out), out
    # A machine fast enough finishes all 2n short samples inside the second: then not partial.
    late = r"4\. deadline 1 s: (504, no answer in time|answer .*, partial (True, deadline|False, \w+))"
    assert re.search(late, out), out
    assert "partial False, deadline" not in out
