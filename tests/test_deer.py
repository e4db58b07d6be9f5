"""DEER-style trial answers on one streamed chain of thought, against the local llama.cpp server.

SmolLM2-135M never writes "Wait", so the tests put the transition points on common words ("the",
"so", ...) to make trials happen; they test mechanics (trials from the exact prefix while the chain
streams, the threshold's meaning, every trial token counted, deadline and budget), not accuracy.
"""

from __future__ import annotations

import math

import pytest

from dynasor_client import Endpoint, SamplingParams, as_program
from dynasor_client.algorithms import deer, trial_confidence
from dynasor_client.endpoints import TokenLogprob
from dynasor_client.program import StopReason
from tests.support.llama import IGNORE_EOS

QUESTION = "Tom has 3 apples and buys 4 more. Then he gives 2 away. How many apples does he have now?"
COMMON = ("the", "so", "is", "and", "he", "of")
# The chain runs to max_tokens whatever the model writes (llama.cpp's ignore_eos, passed through to
# the chain only; trials and the forced answer stop at the model's end): an early end of its own
# (58-207 tokens here, other text on another CPU) would make "trials happen", "a trial closes it",
# the deadline and the budget depend on the text.
CHAIN = SamplingParams(temperature=0.7, seed=3, extra_body=IGNORE_EOS)


def _lp(token: str, p: float) -> TokenLogprob:
    return TokenLogprob(token, math.log(p))


def test_trial_confidence_reads_the_answer_tokens() -> None:
    # The answer's tokens, up to the brace that closes the box; the brace alone does not count.
    answer, confidence = trial_confidence([_lp("1", 0.9), _lp("8", 0.7), _lp("}", 0.1), _lp("\n", 0.2)])
    assert answer == "18" and math.isclose(confidence, 0.8)
    # A token holding the answer's end and the brace counts; nested braces stay inside the answer.
    answer, confidence = trial_confidence([_lp("\\frac{1", 0.5), _lp("}{2}", 1.0), _lp("3}", 0.6)])
    assert answer == "\\frac{1}{2}3" and math.isclose(confidence, 0.7)
    # A box that never closes (the reply was cut) or closes empty answers nothing, confidence 0.
    assert trial_confidence([_lp("1", 0.99), _lp("2", 0.99)]) == (None, 0.0)
    assert trial_confidence([_lp(" }", 0.99)]) == (None, 0.0)


async def test_trials_run_while_the_chain_streams_and_never_stop_it_under_threshold_one(
    local_endpoint: Endpoint,
) -> None:
    program = as_program(
        deer, QUESTION, threshold=1.0, max_tokens=96, max_trials=4, points=COMMON, params=CHAIN
    )
    result = await program.run(local_endpoint)
    d = result.details
    assert d["trials"], "the chain held none of the common words"
    assert len(d["trials"]) <= 4 and result.steps == len(d["trials"])
    for offset, answer, confidence in d["trials"]:
        assert 0 < offset < d["generated_tokens"]  # sent from a prefix, the chain went on past it
        assert 0.0 <= confidence < 1.0 and (answer is not None or confidence == 0.0)
    # No trial reached 1.0: the chain ran its course, to max_tokens (ignore_eos), the answer forced.
    assert result.stop_reason is StopReason.CAP
    assert result.tokens.generated == d["generated_tokens"] == 96
    assert d["forced"] and not d["finished"] and result.answer == d["forced_answer"]
    assert result.tokens.probe >= len(d["trials"]) + 1  # every trial's tokens, and the forced answer's
    # What was reported: the most confident trial answer so far, after each trial.
    assert [p.observations for p in result.certaindex] == list(range(1, len(d["trials"]) + 1))
    best = max(d["trials"], key=lambda t: t[2])
    assert result.certaindex[-1].answer == best[1]


async def test_a_confident_trial_closes_the_chain(local_endpoint: Endpoint) -> None:
    program = as_program(deer, QUESTION, threshold=0.01, max_tokens=400, points=COMMON, params=CHAIN)
    result = await program.run(local_endpoint)
    d = result.details
    assert result.stop_reason is StopReason.CONFIDENT
    confident = [t for t in d["trials"] if t[1] is not None and t[2] >= 0.01]
    assert confident and result.answer in {t[1] for t in confident}
    assert not d["finished"] and not d["forced"]
    assert result.tokens.generated == d["generated_tokens"] < 400  # closed mid-stream, counted
    assert result.tokens.probe > 0


async def test_deadline_returns_the_best_trial_so_far(local_endpoint: Endpoint) -> None:
    program = as_program(deer, QUESTION, threshold=1.0, max_tokens=900, points=COMMON, params=CHAIN)
    result = await program.run(local_endpoint, deadline_s=2.0)
    if result.stop_reason is StopReason.CAP and result.tokens.generated == 900:
        pytest.skip("this machine decoded all 900 tokens of the chain within the 2 s deadline")
    assert result.stop_reason is StopReason.DEADLINE and result.partial
    assert result.tokens.generated > 0  # the cancelled stream's tokens are charged
    if result.certaindex:
        assert result.answer == result.certaindex[-1].answer


async def test_budget_stops_the_chain(local_endpoint: Endpoint) -> None:
    program = as_program(deer, QUESTION, threshold=1.0, max_tokens=900, points=COMMON, params=CHAIN)
    result = await program.run(local_endpoint, token_budget=300)
    assert result.stop_reason is StopReason.BUDGET
    assert result.tokens.total <= 300


async def test_on_a_server_without_chat_templates_the_chat_is_continued() -> None:
    # The replay engine renders no chat template: the chain streams as a chat, trials continue the
    # assistant's turn (prefill). Its probe rule answers only what the partial text already holds.
    from tests.support.replay import replay_endpoint, traces_or_skip

    questions = traces_or_skip("gsm8k-qwen25coder05b-sc8-logprobs.jsonl")[:3]
    async with replay_endpoint(questions) as endpoint:
        for question in questions:
            program = as_program(deer, question.question, threshold=1.0, max_tokens=200, points=COMMON)
            result = await program.run(endpoint)
            d = result.details
            assert d["trials"] and result.tokens.probe >= len(d["trials"])
            for _, answer, confidence in d["trials"]:
                assert 0.0 <= confidence <= 1.0 and (answer is None or answer in d["text"])
            assert d["finished"] or d["forced"]
