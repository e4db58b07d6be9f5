"""Reward-model clients (each a :class:`~._reward_protocol.RewardModel`).

- :class:`PoolingRewardModel`: vLLM's ``POST /pooling`` for (process) reward models such as
  Qwen2.5-Math-PRM; the replay server's ``/pooling`` speaks the same shape, so the same client reads
  recorded rewards back from a :class:`~dynasor_client.replay.ReplayServer`.
- :class:`JudgeRewardModel`: any chat model as a judge: P(Yes) / (P(Yes) + P(No)) of a one-token reply.

Both also have ``score_with_usage`` (:class:`MeteredRewardModel`): the scores plus the tokens the
reward model processed, which :func:`~._best_of_n.best_of_n` counts as ``TokenKind.REWARD``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._exceptions import MalformedResponse
from ..endpoints import Endpoint, Message, SamplingParams, Usage, estimate_tokens, prompt_estimate

DEFAULT_POOLING_TEMPLATE = "{question}\n\n{response}"
DEFAULT_JUDGE_TEMPLATE = (
    "Question:\n{question}\n\nProposed solution:\n{response}\n\nIs this solution correct? Answer Yes or No."
)


@dataclass(frozen=True, slots=True)
class RewardScore:
    """Raw scores of one response (one per step, or one for an outcome reward model) and the tokens
    the reward model processed for them, all counted as ``completion_tokens`` (prompt 0): a reward
    request's tokens are reward tokens, not the program's prompt (``None``: not reported)."""

    scores: list[float]
    usage: Usage | None = None


@runtime_checkable
class MeteredRewardModel(Protocol):
    """A reward model that also reports what scoring cost."""

    async def score_with_usage(self, question: str, steps: Sequence[str]) -> RewardScore: ...


def _reward_usage(body: Any) -> Usage | None:
    """All tokens a reward request processed (``total_tokens``, else prompt + completion) or None."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if not isinstance(total, int):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int):
            return None
        total = prompt + (completion if isinstance(completion, int) else 0)
    return Usage(prompt_tokens=0, completion_tokens=total)


def parse_pooling_scores(body: Any) -> list[float]:
    """Per-step scores from a ``/pooling`` answer: ``body["data"][0]["data"]`` (one input).

    Accepted, element by element: a number (that step's score) or a list of numbers (its last
    entry: ``[p_bad, p_good]`` of a PRM's step token gives ``p_good``, ``[score]`` gives ``score``).
    A bare number instead of the list is one score. Anything else raises MalformedResponse.
    """
    try:
        data = body["data"][0]["data"]
    except (KeyError, IndexError, TypeError) as exc:
        raise MalformedResponse(f"/pooling answer has no data[0].data: {str(body)[:200]!r}") from exc
    items = [data] if isinstance(data, int | float) and not isinstance(data, bool) else data
    if not isinstance(items, list):
        raise MalformedResponse(f"/pooling data[0].data is not a list: {str(data)[:200]!r}")
    scores = []
    for item in items:
        value = item[-1] if isinstance(item, list) and item else item
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MalformedResponse(f"/pooling step score is not a number: {str(item)[:100]!r}")
        scores.append(float(value))
    return scores


class PoolingRewardModel:
    """A (process) reward model served by vLLM's ``POST /pooling`` (or the replay server's).

    The input sent is ``template`` filled with the question and the response, the response being
    the steps joined by ``step_separator``, each step followed by ``step_tag`` when one is given
    (Qwen2.5-Math-PRM marks a step's end with ``"<extra_0>"``: vLLM then pools one score per tag).
    Returns one score per step as the server gives them (:func:`parse_pooling_scores`); an outcome
    reward model (and the replay server with outcome rewards only) gives one. For the replay
    server leave ``step_tag`` unset: the input must end with the recorded sample's text.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        step_separator: str = "\n\n",
        step_tag: str | None = None,
        template: str = DEFAULT_POOLING_TEMPLATE,
    ) -> None:
        if "{question}" not in template or "{response}" not in template:
            raise ValueError("template needs the fields {question} and {response}")
        self.endpoint, self.step_separator, self.step_tag = endpoint, step_separator, step_tag
        self.template = template

    def render(self, question: str, steps: Sequence[str]) -> str:
        """The text scored: question and the tagged, joined steps in the template."""
        if isinstance(steps, str):
            raise ValueError("steps must be a sequence of strings, not one string")
        if not steps:
            raise ValueError("nothing to score: steps is empty")
        tag = self.step_tag or ""
        response = self.step_separator.join(step + tag for step in steps)
        return self.template.format(question=question, response=response)

    def estimate(self, question: str, steps: Sequence[str]) -> int:
        """The estimated tokens of scoring ``steps`` (what a budget reserves for it)."""
        return estimate_tokens(self.render(question, steps))

    async def score_with_usage(self, question: str, steps: Sequence[str]) -> RewardScore:
        body = {"model": await self.endpoint.model_name(), "input": self.render(question, steps)}
        answer = await self.endpoint.root_request("POST", "/pooling", body)
        return RewardScore(parse_pooling_scores(answer), _reward_usage(answer))

    async def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return (await self.score_with_usage(question, steps)).scores


#: Tokens added to the text of a reward request by a reward model without an ``estimate`` method.
REWARD_OVERHEAD = 32


def reward_estimate(model: object, question: str, steps: Sequence[str]) -> int:
    """The estimated tokens of scoring ``steps``: the model's own ``estimate`` when it has one,
    else the text's estimate plus :data:`REWARD_OVERHEAD`."""
    estimate = getattr(model, "estimate", None)
    if callable(estimate):
        return int(estimate(question, steps))
    return estimate_tokens(question) + sum(estimate_tokens(s) for s in steps) + REWARD_OVERHEAD


def yes_probability(top: Sequence[tuple[str, float]]) -> float:
    """P(Yes) / (P(Yes) + P(No)) over top log-probabilities (tokens compared stripped and
    case-folded, several spellings summed); 0.5 when neither appears."""
    yes = no = 0.0
    for token, logprob in top:
        word = token.strip().lower()
        if word == "yes":
            yes += math.exp(logprob)
        elif word == "no":
            no += math.exp(logprob)
    return 0.5 if yes + no == 0 else yes / (yes + no)


class JudgeRewardModel:
    """Any chat model as an outcome reward model: one score, P(Yes) / (P(Yes) + P(No)).

    Asks ``prompt_template`` (fields ``{question}`` and ``{response}``, the steps joined by
    ``step_separator``) for one token at temperature 0 with ``top_logprobs=5``, and reads P(Yes) and
    P(No) from the first token's alternatives (:func:`yes_probability`). Where the server gives no
    log-probabilities the reply itself decides: "Yes" 1.0, "No" 0.0, else 0.5.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        prompt_template: str = DEFAULT_JUDGE_TEMPLATE,
        step_separator: str = "\n\n",
        system: str | None = None,
    ) -> None:
        if "{question}" not in prompt_template or "{response}" not in prompt_template:
            raise ValueError("prompt_template needs the fields {question} and {response}")
        self.endpoint, self.prompt_template = endpoint, prompt_template
        self.step_separator, self.system = step_separator, system

    def _messages(self, question: str, steps: Sequence[str]) -> list[Message]:
        if isinstance(steps, str):
            raise ValueError("steps must be a sequence of strings, not one string")
        if not steps:
            raise ValueError("nothing to score: steps is empty")
        prompt = self.prompt_template.format(question=question, response=self.step_separator.join(steps))
        return [
            *([{"role": "system", "content": self.system}] if self.system else []),
            {"role": "user", "content": prompt},
        ]

    def estimate(self, question: str, steps: Sequence[str]) -> int:
        """The estimated tokens of scoring ``steps``: the judge's prompt and its one-token reply."""
        return prompt_estimate(None, self._messages(question, steps)) + 1

    async def score_with_usage(self, question: str, steps: Sequence[str]) -> RewardScore:
        messages = self._messages(question, steps)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=5)
        generation = await self.endpoint.chat(messages, params=params)
        choice = generation.choices[0]
        if choice.logprobs:
            first = choice.logprobs[0]
            score = yes_probability(first.top or ((first.token, first.logprob),))
        else:
            score = yes_probability(((choice.text, 0.0),))
        usage = generation.usage
        return RewardScore([score], Usage(0, usage.prompt_tokens + usage.completion_tokens))

    async def score(self, question: str, steps: Sequence[str]) -> list[float]:
        return (await self.score_with_usage(question, steps)).scores
