"""Answers to the capability probes of :class:`~dynasor_client.Endpoint`, from a built-in recording.

An endpoint created without ``capabilities=`` probes its server once, on first use
(:func:`dynasor_client.endpoints._capabilities.detect`), with prompts that no trace records: ``"Hi"``
(completions and chat; with logprobs, ``return_token_ids``, ``stream_options.include_usage``),
``"Hello world"`` as token ids from ``/tokenize``, a chat continuing the assistant message ``"The
capital of France is"``, and a seeded ``n=2`` draw for ``"Write one random word:"``. The replay
server answers these from the tiny recording :data:`PROBE_QUESTIONS`, through a
:class:`~._engine.ReplayEngine` of its own: the same pieces, draws, continuations, token ids,
streaming, usage and modelled GPU time as any request, so detection finds what the server really
does (:data:`~._parts.REPLAY_CAPABILITIES`).

Only a request that asks no recorded question of the traces, and whose text (stripped) is exactly
one of these questions, or one followed by a newline and the beginning of one of its samples, is
answered from them; every other unknown prompt is still refused (400, ``no_recorded_question``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

from ..traces import TraceQuestion, TraceSample
from ._engine import ReplayEngine
from ._pieces import count_units
from ._plans import ReplayPlan

__all__ = ["PROBE_QUESTIONS", "CapabilityProbes"]


def _question(qid: str, question: str, texts: Sequence[str]) -> TraceQuestion:
    samples = tuple(
        TraceSample(answer=None, num_tokens=count_units(t), text=t, finish_reason="stop") for t in texts
    )
    return TraceQuestion(id=f"capability-probe:{qid}", question=question, gold="", samples=samples)


#: The prompts of ``endpoints._capabilities`` (kept in step with it by ``tests/test_replay_server.py``).
PROBE_QUESTIONS: tuple[TraceQuestion, ...] = (
    _question("hi", "Hi", ["Hello! How can I help you today?", "Hi there! What can I do for you?"]),
    _question("hello-world", "Hello world", ["Hello! It is nice to meet you."]),
    _question("prefill", "Complete the sentence.", ["The capital of France is Paris."]),
    _question("random-word", "Write one random word:", [" Lantern", " Orbit", " Meadow", " Copper"]),
)


class CapabilityProbes:
    """Plans replies to capability probes (see the module docs); ``seed`` is the server's."""

    def __init__(self, *, seed: int = 0) -> None:
        self.engine = ReplayEngine(PROBE_QUESTIONS, seed=seed, probe_fallback="none", max_programs=1000)

    @staticmethod
    def asks(text: str) -> bool:
        """Whether ``text`` is a capability probe's (checked once the traces matched nothing)."""
        text = text.strip()
        for q in PROBE_QUESTIONS:
            if text == q.question:
                return True
            head = q.question + "\n"
            if text.startswith(head) and any(s.text.startswith(text[len(head) :]) for s in q.samples):
                return True
        return False

    def plan(
        self,
        text: str,
        *,
        n: int,
        max_tokens: int | None,
        stop: Sequence[str],
        program: str,
        remember: bool,
        greedy: bool,
        logprobs: bool,
    ) -> ReplayPlan:
        """The reply to a probe (as :meth:`~._engine.ReplayEngine.plan`)."""
        plan = self.engine.plan(
            text,
            n=n,
            max_tokens=max_tokens,
            stop=stop,
            program=program,
            remember=remember,
            greedy=greedy,
            logprobs=logprobs,
        )
        # Prompt keys of their own, so the modelled prefix cache never mixes them with the traces'.
        keys: list[Hashable] = [("capability-probe", key) for key in plan.prompt_keys]
        return dataclasses.replace(plan, prompt_keys=keys)
