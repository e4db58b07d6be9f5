"""Every algorithm the proxy serves, in one registry: serving another one is one more :class:`Entry`.

An entry names the algorithm (and its aliases in ``dynasor.algorithm``), says which coroutine runs
it, which pydantic model validates its ``dynasor`` options, how the request and those options become
the coroutine's keyword arguments, how its result becomes the response's content, and its model
suffix (``qwen+sc8``). The proxy calls every algorithm the same way::

    await entry.algorithm(question, context=context, prompting=Prompting(...), **arguments)

where ``arguments = entry.arguments(options, inputs)``.

=============  =======================  ==========================================================
name           aliases                  answer
=============  =======================  ==========================================================
``sc``         self_consistency         ``vote``: the full text of a sample with the winning answer
``best_of_n``  bon                      ``vote``: the best-scored sample (``aggregate: "max"``)
``cot``        dynasor_cot              ``chain``: the chain of thought, streamed as decoded
``rebase``                              ``tree``: the answer (``The answer is \\boxed{...}.``)
``mcts``                                ``tree``: the answer (``The answer is \\boxed{...}.``)
=============  =======================  ==========================================================

Best-of-N, Rebase and MCTS need a reward model: ``reward`` (``"judge"``: the upstream model as a
yes/no judge, :class:`~dynasor_client.algorithms.JudgeRewardModel`; ``"pooling"``: the upstream's
``/pooling`` route, :class:`~dynasor_client.algorithms.PoolingRewardModel`, for vLLM's process
reward models and the replay engine), by default the proxy's own (``ProxyConfig.reward``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..algorithms import RewardModel, best_of_n, dynasor_cot, mcts, rebase, self_consistency
from ..endpoints import SamplingParams
from ..program import ProgramResult

Answer = Literal["vote", "chain", "tree"]
Reward = Literal["judge", "pooling"]

DEFAULT_N = 16
MAX_N = 256
#: Effort of Dynasor-CoT: (chunk_tokens, window, max_tokens).
EFFORTS: dict[str, tuple[int, int, int]] = {
    "low": (32, 2, 1024),
    "medium": (64, 3, 2048),
    "high": (64, 5, 4096),
}
#: Names of pass-through in ``dynasor.algorithm``.
PASSTHROUGH = ("none", "passthrough", "pass-through")


# ---------------------------------------------------------------------------------------- options


class Options(BaseModel):
    """The ``dynasor`` options every algorithm takes (``algorithm`` and ``deadline_s`` are read
    before these: pass-through takes them too)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    token_budget: int | None = Field(None, ge=1, le=10**12)
    task: Literal["math", "gsm8k", "multiple_choice"] = "math"
    progress: bool = False


class SamplingOptions(Options):
    n: int = Field(DEFAULT_N, ge=1, le=MAX_N)
    detect: int | None = Field(None, ge=1, le=MAX_N)


class SelfConsistencyOptions(SamplingOptions):
    rule: Literal["paper", "adaptive"] = "paper"


class BestOfNOptions(SamplingOptions):
    aggregate: Literal["max", "weighted_majority"] = "max"
    reward: Reward | None = None


class CotOptions(Options):
    effort: Literal["low", "medium", "high"] = "medium"
    chunk_tokens: int | None = Field(None, ge=1, le=8192)
    window: int | None = Field(None, ge=1, le=64)

    @property
    def cot_settings(self) -> tuple[int, int, int]:
        """(chunk_tokens, window, max_tokens) of Dynasor-CoT."""
        chunk, window, most = EFFORTS[self.effort]
        return self.chunk_tokens or chunk, self.window or window, most


class TreeOptions(Options):
    reward: Reward | None = None
    max_depth: int = Field(8, ge=1, le=64)
    step_tokens: int = Field(256, ge=1, le=8192)


class RebaseOptions(TreeOptions):
    width: int = Field(8, ge=1, le=MAX_N)


class MctsOptions(TreeOptions):
    max_depth: int = Field(6, ge=1, le=64)
    iterations: int = Field(16, ge=1, le=MAX_N)
    expansions: int = Field(2, ge=1, le=16)


# ---------------------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the request gives an algorithm besides its options and the question."""

    params: SamplingParams  # the request's sampling settings
    max_tokens: int | None  # the request's max_tokens (or max_completion_tokens)
    reward_model: Callable[[Reward | None], RewardModel]  # None: the proxy's own
    on_text: Callable[[str], None]  # streams text to the client

    def sampling(self, temperature: float) -> SamplingParams:
        """The request's sampling settings, with ``temperature`` unless it set one."""
        if self.params.temperature is not None:
            return self.params
        return dataclasses.replace(self.params, temperature=temperature)


@dataclass(frozen=True, slots=True)
class Suffix:
    """An algorithm's model suffix: ``+WORD``, ``+WORDN`` (``count``) or ``+WORD-CHOICE`` (``choice``)."""

    words: tuple[str, ...]
    count: str | None = None  # the option a trailing number sets
    count_meaning: str = ""  # what that number is, for the error message
    choice: str | None = None  # the option a "-word" sets (one of its Literal values)
    choices: tuple[str, ...] = ()


OptionsT = TypeVar("OptionsT", bound=Options)


@dataclass(frozen=True, slots=True)
class Entry(Generic[OptionsT]):
    """One algorithm the proxy serves (module docs)."""

    name: str
    title: str  # for messages
    algorithm: Callable[..., Awaitable[ProgramResult]]
    options: type[OptionsT]
    arguments: Callable[[OptionsT, Inputs], dict[str, Any]]
    answer: Answer
    aliases: tuple[str, ...] = ()
    suffix: Suffix | None = None
    chat_only: bool = False  # /v1/completions cannot serve it (it builds its own chat)


def _sc(o: SelfConsistencyOptions, i: Inputs) -> dict[str, Any]:
    return {"n": o.n, "detect": min(o.detect or 5, o.n), "rule": o.rule, "params": i.sampling(0.7)}


def _best_of_n(o: BestOfNOptions, i: Inputs) -> dict[str, Any]:
    return {
        "reward_model": i.reward_model(o.reward),
        "n": o.n,
        "detect": min(o.detect or 4, o.n),
        "aggregate": o.aggregate,
        "params": i.sampling(0.7),
    }


def _cot(o: CotOptions, i: Inputs) -> dict[str, Any]:
    chunk, window, most = o.cot_settings
    params = dataclasses.replace(i.sampling(0.6), max_tokens=None)  # max_tokens is the chain's
    return {
        "chunk_tokens": chunk,
        "window": window,
        "max_tokens": i.max_tokens or most,
        "params": params,
        "on_text": i.on_text,
    }


def _rebase(o: RebaseOptions, i: Inputs) -> dict[str, Any]:
    return {
        "reward_model": i.reward_model(o.reward),
        "width": o.width,
        "max_depth": o.max_depth,
        "step_tokens": o.step_tokens,
        "params": i.sampling(0.7),
    }


def _mcts(o: MctsOptions, i: Inputs) -> dict[str, Any]:
    return {
        "reward_model": i.reward_model(o.reward),
        "iterations": o.iterations,
        "expansions": o.expansions,
        "max_depth": o.max_depth,
        "step_tokens": o.step_tokens,
        "params": i.sampling(0.7),
    }


_ENTRIES: tuple[Entry[Any], ...] = (
    Entry("sc", "self-consistency", self_consistency, SelfConsistencyOptions, _sc, "vote",
          aliases=("self_consistency", "self-consistency"),
          suffix=Suffix(("sc",), count="n", count_meaning="the most samples")),
    Entry("best_of_n", "best-of-N", best_of_n, BestOfNOptions, _best_of_n, "vote",
          aliases=("best-of-n", "bon"),
          suffix=Suffix(("bon", "best_of_n"), count="n", count_meaning="the most samples")),
    Entry("cot", "Dynasor-CoT", dynasor_cot, CotOptions, _cot, "chain",
          aliases=("dynasor_cot", "dynasor-cot"), chat_only=True,
          suffix=Suffix(("cot",), choice="effort", choices=tuple(EFFORTS))),
    Entry("rebase", "Rebase", rebase, RebaseOptions, _rebase, "tree", chat_only=True,
          suffix=Suffix(("rebase",), count="width", count_meaning="the tree's width")),
    Entry("mcts", "MCTS", mcts, MctsOptions, _mcts, "tree", chat_only=True,
          suffix=Suffix(("mcts",), count="iterations", count_meaning="the iterations")),
)  # fmt: skip

#: The registry: canonical name -> entry.
ALGORITHMS: dict[str, Entry[Any]] = {entry.name: entry for entry in _ENTRIES}


def lookup(name: str) -> Entry[Any] | None:
    """The entry ``name`` (or an alias, any case) names; None for pass-through; KeyError if unknown."""
    key = name.lower()
    if key in PASSTHROUGH:
        return None
    for entry in ALGORITHMS.values():
        if key == entry.name or key in entry.aliases:
            return entry
    raise KeyError(name)
