"""Unit tests of response normalisation (``endpoints._parse``): no server involved."""

from __future__ import annotations

import math
from typing import Any

import pytest

from dynasor_client._exceptions import MalformedResponse
from dynasor_client.endpoints import TokenLogprob
from dynasor_client.endpoints._parse import ChoiceAccumulator, parse_logprobs, parse_usage, split_reasoning
from dynasor_client.endpoints._types import Usage

# --- split_reasoning -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>r</think>a", ("r", "a")),
        ("<think>r</think>\n\na", ("r", "a")),  # the blank line after the tag is not the answer
        ("r</think>a", ("r", "a")),  # opening tag in the prompt (DeepSeek-R1 templates)
        ("<think>r", ("r", "")),  # cut by max_tokens while thinking
        ("just an answer", (None, "just an answer")),
        ("", (None, "")),
        ("pre <think>r</think>a", ("r", "pre a")),  # text before the thinking stays in the answer
        ("pre <think>r", ("r", "pre ")),
        ("<think></think>a", ("", "a")),
        ("<think>multi\nline</think>x<think>y", ("multi\nline", "x<think>y")),  # only the first block
    ],
)
def test_split_reasoning(text: str, expected: tuple[str | None, str]) -> None:
    assert split_reasoning(text) == expected


# --- parse_logprobs --------------------------------------------------------------------------------


def chat_entry(
    token: str, logprob: float | None, token_id: int | None = None, **top: float
) -> dict[str, Any]:
    entry: dict[str, Any] = {"token": token, "logprob": logprob, "bytes": list(token.encode())}
    if token_id is not None:
        entry["id"] = token_id
    entry["top_logprobs"] = [{"token": t, "logprob": lp} for t, lp in top.items()]
    return entry


def test_absent_logprobs() -> None:
    assert parse_logprobs(None) is None
    assert parse_logprobs({}) is None
    assert parse_logprobs({"text_offset": [0]}) is None  # neither shape


def test_chat_shape() -> None:
    raw = {"content": [chat_entry("Hel", -0.5, 7, Hel=-0.5, He=-1.5), chat_entry("lo", -0.25, 8, lo=-0.25)]}
    assert parse_logprobs(raw) == [
        TokenLogprob("Hel", -0.5, 7, (("Hel", -0.5), ("He", -1.5))),
        TokenLogprob("lo", -0.25, 8, (("lo", -0.25),)),
    ]
    assert parse_logprobs({"content": []}) == []


def test_chat_shape_token_ids_spelt_in_the_token() -> None:
    # vLLM's --return-tokens-as-token-ids spells each token "token_id:N"; an explicit id wins.
    raw = {
        "content": [chat_entry("token_id:42", -0.1), chat_entry("token_id:43", -0.2, 99), chat_entry("x", -1)]
    }
    parsed = parse_logprobs(raw)
    assert parsed is not None
    assert [lp.token_id for lp in parsed] == [42, 99, None]
    assert parse_logprobs({"content": [chat_entry("token_id:abc", -0.1)]}) == [
        TokenLogprob("token_id:abc", -0.1, None, ())
    ]


def test_chat_shape_null_logprob() -> None:
    raw = {"content": [chat_entry("a", None, 1, a=None)]}  # type: ignore[arg-type]
    (parsed,) = parse_logprobs(raw) or []
    assert parsed.logprob == -math.inf
    assert parsed.top == (("a", -math.inf),)


def test_chat_shape_malformed_entry() -> None:
    with pytest.raises(MalformedResponse):
        parse_logprobs({"content": [{"logprob": -1.0}]})  # no token
    with pytest.raises(MalformedResponse):
        parse_logprobs({"content": [{"token": "a", "logprob": -1.0, "top_logprobs": [{"token": "a"}]}]})
    with pytest.raises(MalformedResponse):
        parse_logprobs(["not", "an", "object"])


def test_legacy_shape() -> None:
    raw = {
        "tokens": ["Hel", "lo"],
        "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"Hel": -0.5, "He": -1.5}, {"lo": -0.25}],
        "text_offset": [0, 3],
    }
    assert parse_logprobs(raw) == [
        TokenLogprob("Hel", -0.5, None, (("Hel", -0.5), ("He", -1.5))),
        TokenLogprob("lo", -0.25, None, (("lo", -0.25),)),
    ]


def test_legacy_shape_without_alternatives_and_with_null() -> None:
    raw = {"tokens": ["token_id:5", "token_id:6"], "token_logprobs": [None, -0.5], "top_logprobs": None}
    assert parse_logprobs(raw) == [
        TokenLogprob("token_id:5", -math.inf, 5, ()),
        TokenLogprob("token_id:6", -0.5, 6, ()),
    ]
    # vLLM with echo: the first prompt token has no alternatives (null entry).
    raw = {"tokens": ["a", "b"], "token_logprobs": [None, -1.0], "top_logprobs": [None, {"b": -1.0}]}
    parsed = parse_logprobs(raw)
    assert parsed is not None
    assert [lp.top for lp in parsed] == [(), (("b", -1.0),)]


def test_legacy_shape_mismatched_lengths() -> None:
    with pytest.raises(MalformedResponse, match="length"):
        parse_logprobs({"tokens": ["a", "b"], "token_logprobs": [-1.0]})
    with pytest.raises(MalformedResponse):
        parse_logprobs({"tokens": ["a"]})  # no token_logprobs at all


def test_parse_usage() -> None:
    assert parse_usage(None) is None
    assert parse_usage({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == Usage(3, 4, None)
    cached = {"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2}}
    assert parse_usage(cached) == Usage(3, 4, 2)
    assert parse_usage({"prompt_tokens": 3, "completion_tokens": None}) == Usage(3, 0, None)


# --- ChoiceAccumulator -----------------------------------------------------------------------------


def chunk(index: int, content: str | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice], **extra}


def accumulate(bodies: list[dict[str, Any]], *, chat: bool = True) -> ChoiceAccumulator:
    acc = ChoiceAccumulator(chat=chat)
    for body in bodies:
        acc.add(body)
    return acc


def test_llamacpp_streams_usage_per_choice() -> None:
    # llama.cpp: each choice's last chunk carries a usage object counting that choice alone.
    acc = accumulate(
        [
            chunk(0, "Hel"),
            chunk(1, "Hi"),
            chunk(0, "lo"),
            chunk(1, " there, friend"),
            chunk(0, None, "stop", usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}),
            chunk(1, None, "length", usage={"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}),
        ]
    )
    choices = acc.build(n_requested=2, keep_logprobs=False)
    assert [c.text for c in choices] == ["Hello", "Hi there, friend"]
    assert [c.num_tokens for c in choices] == [2, 6]
    assert [c.finish_reason for c in choices] == ["stop", "length"]
    assert acc.model == "m"
    assert acc.usage is not None and acc.usage.prompt_tokens == 5


def test_vllm_streams_one_final_usage_chunk() -> None:
    bodies = [
        chunk(0, "Hel"),
        chunk(0, "lo"),
        chunk(0, None, "stop"),
        {"id": "c", "model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    ]
    (choice,) = accumulate(bodies).build(n_requested=1, keep_logprobs=False)
    assert choice.text == "Hello"
    assert choice.num_tokens == 3  # n == 1: usage is this choice's count


def test_vllm_final_usage_cannot_count_several_choices() -> None:
    bodies = [
        chunk(0, "Hel"),
        chunk(1, "Hi"),
        chunk(0, None, "stop"),
        chunk(1, None, "stop"),
        {"id": "c", "model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    ]
    with pytest.raises(MalformedResponse, match="count"):
        accumulate(bodies).build(n_requested=2, keep_logprobs=False)


def test_several_choices_are_counted_from_logprobs() -> None:
    def with_logprobs(index: int, token: str, token_id: int) -> dict[str, Any]:
        body = chunk(index, token)
        body["choices"][0]["logprobs"] = {"content": [chat_entry(token, -0.5, token_id)]}
        return body

    bodies = [
        with_logprobs(0, "a", 1),
        with_logprobs(1, "b", 2),
        with_logprobs(0, "c", 3),
        chunk(0, None, "stop"),
        chunk(1, None, "stop"),
        {"id": "c", "model": "m", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}},
    ]
    acc = accumulate(bodies)
    kept = acc.build(n_requested=2, keep_logprobs=True, index_offset=4)
    assert [(c.index, c.text, c.num_tokens, c.token_ids) for c in kept] == [
        (4, "ac", 2, (1, 3)),
        (5, "b", 1, (2,)),
    ]
    assert kept[0].logprobs is not None and [lp.token for lp in kept[0].logprobs] == ["a", "c"]
    dropped = acc.build(n_requested=2, keep_logprobs=False)
    assert all(c.logprobs is None for c in dropped)
    assert [c.token_ids for c in dropped] == [(1, 3), (2,)]  # ids are kept: they are cheap


def test_empty_choice_counts_zero_without_a_source() -> None:
    choices = accumulate([chunk(0, "x"), chunk(1, None, "length"), chunk(0, None, "stop")])
    with pytest.raises(MalformedResponse):
        choices.build(n_requested=2, keep_logprobs=False)  # choice 0 has text but no count
    empty = accumulate([chunk(0, None, "length"), chunk(1, None, "length")]).build(
        n_requested=2, keep_logprobs=False
    )
    assert [c.num_tokens for c in empty] == [0, 0]


def test_whole_chat_response_with_reasoning() -> None:
    body = {
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "reasoning_content": "think", "content": "42"},
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "<think>t2</think>\n41"},
                "finish_reason": "stop",
            },
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9},
    }
    acc = accumulate([body])
    with pytest.raises(MalformedResponse):
        acc.build(n_requested=2, keep_logprobs=False)  # usage says nothing about the split
    (single,) = accumulate([{**body, "choices": body["choices"][:1]}]).build(
        n_requested=1, keep_logprobs=False
    )
    assert (single.reasoning, single.text, single.num_tokens) == ("think", "42", 9)
    tagged = {**body, "choices": [{**body["choices"][1], "index": 0}]}
    (inline,) = accumulate([tagged]).build(n_requested=1, keep_logprobs=False)
    assert (inline.reasoning, inline.text, inline.raw_text) == ("t2", "41", "<think>t2</think>\n41")


def test_streamed_reasoning_field() -> None:
    bodies = [
        {
            "model": "m",
            "choices": [{"index": 0, "delta": {"reasoning_content": "Let me"}, "finish_reason": None}],
        },
        {"model": "m", "choices": [{"index": 0, "delta": {"reasoning": " think."}, "finish_reason": None}]},
        chunk(0, "42"),
        chunk(0, None, "stop", usage={"prompt_tokens": 1, "completion_tokens": 4}),
    ]
    acc = accumulate(bodies)
    assert acc.got_content
    (choice,) = acc.build(n_requested=1, keep_logprobs=False)
    assert (choice.reasoning, choice.text, choice.num_tokens) == ("Let me think.", "42", 4)


def test_completions_response_with_token_ids() -> None:
    # vLLM's return_token_ids: generated ids per choice, prompt ids at the top level.
    body = {
        "model": "m",
        "prompt_token_ids": [1, 2],
        "choices": [
            {"index": 0, "text": "ab", "token_ids": [10, 11], "finish_reason": "stop"},
            {"index": 1, "text": "c", "token_ids": [12], "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
    }
    acc = accumulate([body], chat=False)
    choices = acc.build(n_requested=2, keep_logprobs=False)
    assert [(c.text, c.num_tokens, c.token_ids) for c in choices] == [("ab", 2, (10, 11)), ("c", 1, (12,))]
    assert acc.prompt_token_ids == [1, 2]


def test_wrong_number_of_choices_and_missing_choices() -> None:
    with pytest.raises(MalformedResponse, match="asked for 2"):
        accumulate([chunk(0, "x", "stop")]).build(n_requested=2, keep_logprobs=False)
    with pytest.raises(MalformedResponse, match="choices"):
        accumulate([{"error": {"message": "boom"}}])
    with pytest.raises(MalformedResponse):
        accumulate(["not an object"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "body",
    [
        {"choices": ["not a choice"]},
        {"choices": 5},
        {"choices": [{"index": "first", "text": "x"}]},
        {"choices": [{"index": 0, "text": "x", "token_ids": ["q"]}]},
        {"choices": [{"index": 0, "text": "x"}], "usage": [1]},
        {"choices": [{"index": 0, "text": "x"}], "usage": {"prompt_tokens": "many"}},
        {"choices": [{"index": 0, "text": "x", "logprobs": {"tokens": ["a"], "token_logprobs": ["low"]}}]},
        {
            "choices": [
                {
                    "index": 0,
                    "text": "x",
                    "logprobs": {"tokens": ["a"], "token_logprobs": [-1], "top_logprobs": [["a"]]},
                }
            ]
        },
        {"choices": [{"index": 0, "text": "x", "logprobs": {"tokens": [7], "token_logprobs": [-1]}}]},
        {"choices": [{"index": 0, "text": "x", "logprobs": {"content": [{"token": "a", "logprob": "low"}]}}]},
        {"choices": [{"index": 0, "text": "x", "logprobs": {"content": ["a"]}}]},
    ],
)
def test_wrong_shapes_are_malformed_responses(body: dict[str, Any]) -> None:
    # Valid JSON of the wrong shape must surface as MalformedResponse, never a bare Python error.
    with pytest.raises(MalformedResponse):
        accumulate([body], chat=False)


def test_null_alternative_logprob_in_legacy_shape() -> None:
    raw = {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1.0, "b": None}]}
    assert parse_logprobs(raw) == [TokenLogprob("a", -1.0, None, (("a", -1.0), ("b", -math.inf)))]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize(
    "choice",
    [{"index": 0}, {"index": 0, "finish_reason": "stop"}, {"index": 0, "message": None, "text": None}],
)
def test_a_choice_without_message_or_text_is_not_an_empty_answer(chat: bool, choice: dict[str, Any]) -> None:
    acc = accumulate(
        [{"choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 0}}], chat=chat
    )
    with pytest.raises(MalformedResponse, match="choice 0 has no"):
        acc.build(n_requested=1, keep_logprobs=False)


def test_an_empty_answer_with_its_field_is_still_an_answer() -> None:
    chat = accumulate([{"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}}]}])
    text = accumulate([{"choices": [{"index": 0, "text": ""}]}], chat=False)
    streamed = accumulate([{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}])
    for acc in (chat, text, streamed):
        (choice,) = acc.build(n_requested=1, keep_logprobs=False)
        assert choice.text == "" and choice.num_tokens == 0
