"""Dynasor-CoT: chunked decoding with concurrent probes, on the local model and the replay engine
(streamed decoding: tests/test_dynasor_cot_stream.py).

SmolLM2-135M tests mechanics only (probe offsets, token accounting, overlap, the stop rule's meaning,
the forced answer); the replay engine runs the program end to end on recorded GSM8K samples. No
recorded trace holds probes, so savings cannot be measured here.
"""

from __future__ import annotations

from dynasor_client import Endpoint, SamplingParams, as_program
from dynasor_client._probe import in_thinking
from dynasor_client.algorithms import dynasor_cot
from dynasor_client.certainty import cluster_answers, probe_consistency_at_least
from dynasor_client.certainty.signals import is_hesitant
from dynasor_client.program import StopReason
from tests.support.llama import IGNORE_EOS
from tests.support.replay import replay_endpoint, traces_or_skip

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


def test_in_thinking() -> None:
    assert in_thinking("<think>so far")
    assert not in_thinking("<think>done</think>the answer")
    assert not in_thinking("no tags at all")
    assert in_thinking("continuing", prompt="<|assistant|>\n<think>\n")
    assert not in_thinking("x</think>y", prompt="<think>\n")


async def test_probes_follow_chunks_and_overlap_decoding(local_endpoint: Endpoint) -> None:
    result = await as_program(
        dynasor_cot,
        QUESTION,
        chunk_tokens=16,
        window=2,
        max_tokens=96,
        decoding="chunked",
        # IGNORE_EOS reaches the chain's chunks only (probes and the forced answer stop at the
        # model's end): the chain runs to max_tokens whatever text this machine's model writes.
        params=SamplingParams(temperature=0.7, seed=1, extra_body=IGNORE_EOS),
    ).run(local_endpoint)
    d = result.details
    offsets = [offset for offset, _, _ in d["probes"]]
    # A probe after each chunk until the rule fires, or the last chunk (16..80: none at 96, the end).
    assert offsets == [16 * (i + 1) for i in range(len(offsets))] and 1 <= len(offsets) <= 5
    # Probe tokens are counted, and only as probe tokens: generated = the chunks kept.
    assert result.tokens.probe > 0
    assert result.tokens.generated == d["generated_tokens"] <= 96
    assert len(result.certaindex) == len(offsets) == result.steps
    # Each probe ran while the next chunk decoded: their intervals overlap.
    for i, (p_start, p_end) in enumerate(d["probe_times"]):
        if i + 1 < len(d["chunk_times"]):
            c_start, c_end = d["chunk_times"][i + 1]
            assert p_start < c_end and c_start < p_end
    # The stop rule's meaning.
    if result.stop_reason is StopReason.CONFIDENT:
        last = d["probes"][-2:]
        # the same answer as the program clusters them ("3 + 4 = 7" and "7" are one answer)
        assert len(last) == 2 and last[1][1] is not None
        assert cluster_answers([last[0][1], last[1][1]]) == [0, 0], last
        assert not any(hesitant for _, _, hesitant in last)
        assert result.certaindex[-1].value == 1.0
    else:  # ran to max_tokens (ignore_eos): all five probes, the answer forced
        assert result.stop_reason is StopReason.CAP and len(offsets) == 5
        assert result.tokens.generated == 96
    assert not d["finished"] and d["forced"] and result.answer == d["forced_answer"]


async def test_rule_firing_cancels_the_chunk_and_forces_the_answer(local_endpoint: Endpoint) -> None:
    # A rule that fires at the first probe: the decode in flight is cancelled, the answer forced.
    result = await as_program(
        dynasor_cot,
        QUESTION,
        chunk_tokens=16,
        window=1,
        max_tokens=96,
        rule=probe_consistency_at_least(0.0, 1),
        decoding="chunked",
        params=SamplingParams(temperature=0.0, extra_body=IGNORE_EOS),  # never done within one chunk
    ).run(local_endpoint)
    d = result.details
    assert result.stop_reason is StopReason.CONFIDENT and result.steps == 1
    assert d["forced"] and result.answer == d["forced_answer"]
    if d["cancelled_chunk"]:  # the usual case: the probe answered while the second chunk decoded
        assert result.tokens.generated == 16 == d["generated_tokens"] and len(d["chunk_times"]) == 1
    else:  # the second chunk (16 tokens) finished before the probe (up to 20): kept, paid for
        assert result.tokens.generated == d["generated_tokens"] <= 32 and len(d["chunk_times"]) == 2
    assert len(d["probe_times"]) == 1


async def test_replay_end_to_end() -> None:
    # gsm8k-4 has samples cut at 320 tokens: a full context
    questions = traces_or_skip("gsm8k-qwen25coder05b-sc8-logprobs.jsonl")[:8]
    async with replay_endpoint(questions) as endpoint:
        stops = []
        for question in questions:
            result = await as_program(
                dynasor_cot, question.question, chunk_tokens=32, window=2, decoding="chunked"
            ).run(endpoint)
            d = result.details
            stops.append(result.stop_reason)
            assert d["probes"] and result.tokens.probe > 0
            assert [o for o, _, _ in d["probes"]] == [32 * (i + 1) for i in range(len(d["probes"]))]
            # The replay's probe rule: an answer only when the partial text already contains it.
            for _, answer, _ in d["probes"]:  # every probed prefix is a prefix of the kept text
                assert answer is None or answer in d["text"]
            assert d["finished"] or d["forced"]
            if d["finished"]:
                assert result.answer in {s.answer for s in question.samples}
        assert set(stops) <= {StopReason.CONFIDENT, StopReason.CAP}


def test_hesitation_words_checked_on_chunk_text() -> None:
    assert is_hesitant("Wait, let me recheck") and not is_hesitant("Now the total is 7")
