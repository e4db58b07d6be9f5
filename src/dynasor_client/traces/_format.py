"""The trace format: recorded real-model samples, many per question, as JSON lines.

One question per line::

    {"id": str, "question": str, "gold": str,            # reference answer
     "prompt_tokens": int?, "source": str?, "system": str?,
     "samples": [
       {"text": str,                                   # the generated text, exactly
        "answer": str | null,                          # extracted final answer (null: none)
        "num_tokens": int,                             # generated tokens
        "finish_reason": str?,                         # "stop" | "length"
        "correct": bool?,                              # graded against gold
        "reward": float?,                              # one outcome reward-model score
        "step_rewards": [float]?,                      # process reward per reasoning step
        "token_logprobs": [float]?,                    # chosen token's logprob, one per token
        "top_logprobs": [[[token, logprob], ...]]?,    # top-k alternatives per token
        "tokens": [str]?,                              # the generated tokens' text, one per token
        "probes": [[token_offset, answer | null]]?     # probed answers of the partial text
       }, ...]}

Fields marked ``?`` are optional; unknown fields are ignored. The SVAMP, MATH and GSM8K files of
``shared/data/traces`` load as they are, and so do traces recorded with ``dynasor-client record``.

**The train/test split** (the same in every command that takes ``--split``): a question is in the
test split when the first 8 bytes of ``sha256(id)``, read as a big-endian integer over 2**64, fall
below :data:`TEST_FRACTION` (0.3); otherwise it is in train. It depends on the id alone, so it is
stable across files, runs, machines and orderings, and a question never changes sides.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Split = Literal["train", "test", "all"]

#: Fraction of question ids that go to the test split (see the module docs).
TEST_FRACTION = 0.3


@dataclass(frozen=True, slots=True)
class TraceSample:
    """One recorded sample: its extracted answer and cost, plus what was recorded about it."""

    answer: str | None
    num_tokens: int
    text: str = ""
    correct: bool | None = None
    reward: float | None = None
    token_logprobs: tuple[float, ...] | None = None
    finish_reason: str | None = None
    step_rewards: tuple[float, ...] | None = None
    top_logprobs: tuple[tuple[tuple[str, float], ...], ...] | None = None
    #: (token offset, probed answer) pairs in offset order
    probes: tuple[tuple[int, str | None], ...] | None = None
    #: the generated tokens' text (recorded with logprobs; the replay serves them as its tokens)
    tokens: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"text": self.text, "answer": self.answer, "num_tokens": self.num_tokens}
        optional = {
            "finish_reason": self.finish_reason,
            "correct": self.correct,
            "reward": self.reward,
            "step_rewards": None if self.step_rewards is None else list(self.step_rewards),
            "token_logprobs": None if self.token_logprobs is None else list(self.token_logprobs),
            "top_logprobs": None
            if self.top_logprobs is None
            else [[[t, lp] for t, lp in position] for position in self.top_logprobs],
            "tokens": None if self.tokens is None else list(self.tokens),
            "probes": None if self.probes is None else [[offset, answer] for offset, answer in self.probes],
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return data


@dataclass(frozen=True, slots=True)
class TraceQuestion:
    """One question with its reference answer and recorded samples (in recorded order)."""

    id: str
    question: str
    gold: str
    samples: tuple[TraceSample, ...]
    prompt_tokens: int | None = None
    source: str | None = None
    system: str | None = None

    @property
    def split(self) -> Literal["train", "test"]:
        return split_of(self.id)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, in hex (a traces file's provenance)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_unit(text: str) -> float:
    """A stable number in [0, 1) from a string (sha256, first 8 bytes)."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(question_id: str, test_fraction: float = TEST_FRACTION) -> Literal["train", "test"]:
    """``"test"`` for a stable ~30% of question ids (sha256 of the id), ``"train"`` for the rest."""
    return "test" if _hash_unit(question_id) < test_fraction else "train"


def fold_of(question_id: str, folds: int) -> int:
    """A stable fold number in ``range(folds)`` for cross-validation inside a split (salted hash)."""
    return min(int(_hash_unit("fold:" + question_id) * folds), folds - 1)


def select_split(
    questions: Iterable[TraceQuestion], split: Split, test_fraction: float = TEST_FRACTION
) -> list[TraceQuestion]:
    """The questions of one split (``"all"`` keeps every question)."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return [q for q in questions if split == "all" or split_of(q.id, test_fraction) == split]


def _sample_from_json(data: dict[str, Any]) -> TraceSample:
    answer = data.get("answer")
    logprobs = data.get("token_logprobs")
    reward = data.get("reward")
    correct = data.get("correct")
    num_tokens = data.get("num_tokens")
    if num_tokens is None:
        num_tokens = len(logprobs) if logprobs is not None else 0
    steps = data.get("step_rewards")
    top = data.get("top_logprobs")
    probes = data.get("probes")
    tokens = data.get("tokens")
    return TraceSample(
        answer=None if answer is None else str(answer),
        num_tokens=int(num_tokens),
        text=str(data.get("text", "")),
        correct=None if correct is None else bool(correct),
        reward=None if reward is None else float(reward),
        token_logprobs=None if logprobs is None else tuple(float(x) for x in logprobs),
        finish_reason=data.get("finish_reason"),
        step_rewards=None if steps is None else tuple(float(x) for x in steps),
        top_logprobs=None
        if top is None
        else tuple(tuple((str(t), float(lp)) for t, lp in position) for position in top),
        probes=None
        if probes is None
        else tuple((int(o), None if a is None else str(a)) for o, a in sorted(probes, key=lambda p: p[0])),
        tokens=None if tokens is None else tuple(str(t) for t in tokens),
    )


def question_from_json(data: dict[str, Any]) -> TraceQuestion:
    """One trace line (already parsed) as a :class:`TraceQuestion`."""
    try:
        qid, gold, samples = data["id"], data["gold"], data["samples"]
    except KeyError as exc:
        raise ValueError(f"trace line lacks field {exc.args[0]!r}") from exc
    prompt_tokens = data.get("prompt_tokens")
    return TraceQuestion(
        id=str(qid),
        question=str(data.get("question", "")),
        gold=str(gold),
        samples=tuple(_sample_from_json(s) for s in samples),
        prompt_tokens=None if prompt_tokens is None else int(prompt_tokens),
        source=data.get("source"),
        system=data.get("system"),
    )


def question_to_json(question: TraceQuestion) -> dict[str, Any]:
    """The JSON object of one trace line (inverse of :func:`question_from_json`)."""
    data: dict[str, Any] = {"id": question.id, "question": question.question, "gold": question.gold}
    for key in ("prompt_tokens", "source", "system"):
        value = getattr(question, key)
        if value is not None:
            data[key] = value
    data["samples"] = [s.to_json() for s in question.samples]
    return data


def load_traces(path: str | Path) -> list[TraceQuestion]:
    """Read a traces file (JSON lines, one question per line; blank lines are skipped)."""
    questions: list[TraceQuestion] = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                questions.append(question_from_json(json.loads(line)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from exc
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: question ids are not unique")
    return questions


def append_question(path: str | Path, question: TraceQuestion) -> None:
    """Append one question to a traces file and flush it to disk (a crash loses nothing before it)."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(question_to_json(question), ensure_ascii=False, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
