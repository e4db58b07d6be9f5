"""What a sampling program (self-consistency, best-of-N) drew so far, and its plan of rounds."""

from __future__ import annotations

import asyncio
from typing import Any

from ..certainty import Extractor, Observations, StopRule
from ..endpoints import Choice, tool_calls_key
from ..program import ProgramContext
from ._prompting import Prompting
from ._rounds import Reading, RoundPlan, RoundSchedule, round_sizes, rule_may_stop


class Samples:
    """The samples drawn so far: each one's answer (and its class in ``clusters``) and tokens."""

    def __init__(self, prompting: Prompting) -> None:
        self.extract, self.clusters = prompting.extractor(), prompting.clusters()
        self.answers: list[str | None] = []
        self.tokens: list[int] = []
        self.observations = Observations.single([])  #: as of the last :meth:`observe`

    async def add(self, choice: Choice) -> str | None:
        """Read one sample's answer and file it in its class, off the event loop (a long sample's
        extraction and a symbolic check may take a moment). A sample that calls tools answers its
        calls (:func:`~dynasor_client.endpoints.tool_calls_key`: names and canonical arguments)."""
        answer = await asyncio.to_thread(self._read, choice)
        self.answers.append(answer)
        self.tokens.append(choice.num_tokens)
        return answer

    def _read(self, choice: Choice) -> str | None:
        answer = sample_answer(choice, self.extract)
        self.clusters.add(answer)
        return answer

    def observe(self, **signals: Any) -> Observations:
        """The observations after a round (with per-sample ``signals`` such as ``rewards``)."""
        self.observations = Observations.single(self.clusters.labels, tokens=self.tokens, **signals)
        return self.observations

    def majority(self) -> str | None:
        """The answer of the largest class (None before any answer)."""
        winner = self.clusters.majority()
        return None if winner is None else winner[1]


def sample_answer(choice: Choice, extract: Extractor) -> str | None:
    """A sample's answer: its tool calls' key when it calls tools, else what ``extract`` reads
    from its text."""
    return tool_calls_key(choice.tool_calls) or extract(choice.text)


def sample_text(choice: Choice) -> str:
    """What a reward model scores of a sample: its text, then its tool calls written out."""
    calls = tool_calls_key(choice.tool_calls)
    return choice.text if calls is None else f"{choice.text}\n\n{calls}".strip()


def sampling_plan(
    rule: StopRule,
    context: ProgramContext,
    samples: Samples,
    *,
    rounds: RoundSchedule,
    n: int,
    detect: int,
    lookahead: int | None,
    reading: Reading = "planned",
) -> RoundPlan:
    """The rounds of a program drawing up to ``n`` samples under ``rule`` (checks it cannot pass
    are skipped; ``reading="finishing"`` races: see :class:`RoundPlan`)."""
    return RoundPlan(
        round_sizes(rounds, n, detect, rule),
        context,
        lookahead=lookahead,
        may_stop=rule_may_stop(rule, context, lambda: samples.observations),
        reading=reading,
    )
