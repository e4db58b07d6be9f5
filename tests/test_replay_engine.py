"""The replay engine without HTTP: pieces, question matching, draws, continuations, probes, rewards."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dynasor_client import DynasorError
from dynasor_client._probe import PROBE_CLOSE, PROBE_SUFFIX, probe_answer
from dynasor_client.replay._engine import NoMatch, RecordingEnds, ReplayEngine
from dynasor_client.replay._matching import QuestionIndex
from dynasor_client.replay._pieces import Pieces, count_units, split_pieces
from dynasor_client.traces import TraceQuestion, TraceSample, load_traces

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
TRACES = SHARED / "traces"
needs_traces = pytest.mark.skipif(
    not TRACES.is_dir(), reason=f"recorded traces not found at {TRACES} (the shared data checkout)"
)


def _sample(text: str, num_tokens: int | None = None, **fields: object) -> TraceSample:
    n = num_tokens if num_tokens is not None else count_units(text)
    return TraceSample(answer=fields.pop("answer", None), num_tokens=n, text=text, **fields)  # type: ignore[arg-type]


APPLES = "Tom starts with 3 apples. He buys 4 more, so 3 + 4 = 7. The answer is \\boxed{7}."


def tiny_questions() -> list[TraceQuestion]:
    """Three questions, one with recorded probes, one whose samples share a long prefix."""
    q1 = TraceQuestion(
        id="q1",
        question="Tom has 3 apples and buys 4 more. How many apples does he have?",
        gold="7",
        samples=(
            _sample(
                APPLES,
                answer="7",
                probes=((4, "3"), (10, None)),
                token_logprobs=tuple(-0.1 * i for i in range(count_units(APPLES))),
            ),
            _sample("First, 3 apples. Then 4 more apples arrive. Total: \\boxed{7}", answer="7"),
            _sample("We add: 3 + 4 equals 8? No, it is 7. So \\boxed{7}", answer="7"),
            _sample("Counting apples one by one gives seven, \\boxed{7}", answer="7"),
        ),
        prompt_tokens=17,
    )
    shared = "Let us think step by step about the train and the station before answering."
    q2 = TraceQuestion(
        id="q2",
        question="A train leaves at 3 pm and arrives at 5 pm. How long is the trip?",
        gold="2",
        samples=(
            _sample(shared + " It takes 2 hours. \\boxed{2}", answer="2", finish_reason="stop"),
            _sample(shared + " It takes two hours, \\boxed{2}", answer="2", finish_reason="stop"),
            _sample(shared + " Hmm, 5 - 3 = 2 so \\boxed{2}", answer="2", finish_reason="stop"),
        ),
    )
    q3 = TraceQuestion(
        id="q3",
        question="What is 2 + 2?",
        gold="4",
        samples=(_sample("2 + 2 = 4, and I keep counting", 12, finish_reason="length", answer=None),),
    )
    return [q1, q2, q3]


@pytest.fixture
def engine() -> ReplayEngine:
    return ReplayEngine(tiny_questions(), seed=7)


# ---------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("Hello, world! How are you?", 3),
        ("Hello, world! How are you?", 7),
        ("Hello, world! How are you?", 20),
        ("abc", 5),
        ("", 3),
        ("x", 0),
        ("  leading and trailing  ", 4),
        ("\\frac{1}{9} is the answer", 11),
    ],
)
def test_pieces_are_exact(text: str, n: int) -> None:
    pieces = split_pieces(text, n)
    assert "".join(pieces) == text
    assert len(pieces) == (n if n or not text else 1)
    assert split_pieces(text, n) == pieces  # deterministic
    padding = [p for p in pieces if p == ""]
    if len(text) >= n:
        assert not padding
    else:
        assert pieces[len(pieces) - len(padding) :] == ("",) * len(padding)  # padding only at the end


@needs_traces
def test_pieces_of_every_recorded_sample() -> None:
    for name in ("gsm8k-qwen25coder05b-sc8-logprobs.jsonl", "math-qwen25math-sc8.jsonl"):
        for q in load_traces(TRACES / name):
            for s in q.samples:
                p = Pieces.of(s.text, s.num_tokens)
                assert len(p) == s.num_tokens
                assert "".join(p.pieces) == s.text
                assert p.offsets[-1] == len(s.text)


# ---------------------------------------------------------------------------- matching


def test_question_matching_rule() -> None:
    index = QuestionIndex(
        ["What is 2 + 2?", "What is 2 + 2? Explain your answer in words please, briefly.", "   "]
    )
    assert index.find("Q: What   is 2 +\n2?\nA:").question == 0  # whitespace-normalised
    span = index.find("Q: What is 2 + 2? Explain your answer in words please, briefly.\nA:")
    assert span is not None and span.question == 1  # the longest question wins
    text = "sys\nWhat  is 2 + 2?\nA:"
    span = index.find(text)
    assert span is not None and text[span.start : span.end] == "What  is 2 + 2?"
    assert index.find("What is 3 + 3?") is None


def test_unknown_prompt_is_a_clear_error(engine: ReplayEngine) -> None:
    with pytest.raises(NoMatch, match="no recorded question") as info:
        engine.plan("Tell me a joke.")
    assert isinstance(info.value, DynasorError) and isinstance(info.value, ValueError)


def test_diverging_text_is_refused(engine: ReplayEngine) -> None:
    q = engine.questions[1]
    edited = q.samples[0].text[:60] + " and now something no sample ever said"
    with pytest.raises(NoMatch, match="does not continue any recorded sample"):
        engine.plan(q.question + "\n" + edited)


# ---------------------------------------------------------------------------- draws


def _draws(engine: ReplayEngine, program: str, question: str, k: int) -> list[int]:
    return [engine.plan(question, program=program, max_tokens=1).choices[0].sample or 0 for _ in range(k)]


def test_draws_depend_only_on_seed_program_and_question() -> None:
    qs = tiny_questions()
    a, b = ReplayEngine(qs, seed=3), ReplayEngine(qs, seed=3)
    q1, q2 = qs[0].question, qs[1].question
    # Engine a: program p's draws, interleaved with other programs and questions.
    seq_a = []
    for _ in range(4):
        seq_a += _draws(a, "p", q1, 1)
        _draws(a, "other", q1, 1)
        _draws(a, "p", q2, 1)
    # Engine b: the same program alone, after another program has drawn everything.
    _draws(b, "other", q1, 4)
    seq_b = _draws(b, "p", q1, 4)
    assert seq_a == seq_b
    assert sorted(seq_a) == [0, 1, 2, 3]
    orders = {tuple(_draws(ReplayEngine(qs, seed=s), "p", q1, 4)) for s in range(6)}
    assert len(orders) > 1  # the seed matters


def test_no_sample_repeats_within_a_program_until_exhausted(engine: ReplayEngine) -> None:
    q = engine.questions[0]
    size = len(q.samples)
    seq = _draws(engine, "prog", q.question, 3 * size)
    for cycle in range(3):
        assert sorted(seq[cycle * size : (cycle + 1) * size]) == list(range(size))
    plan = engine.plan(q.question, program="fresh", n=size)  # n choices of one request: distinct too
    assert sorted(c.sample or 0 for c in plan.choices) == list(range(size))


def test_seeded_anonymous_requests_repeat_and_unseeded_do_not_remember(engine: ReplayEngine) -> None:
    q = engine.questions[0].question
    name, remember = engine.program_name(None, None, 42)
    assert not remember
    first = [engine.plan(q, program=name, remember=remember).choices[0].sample for _ in range(3)]
    assert len(set(first)) == 1  # the same seeded request gets the same sample


def test_greedy_repeats_one_sample(engine: ReplayEngine) -> None:
    q = engine.questions[0].question
    samples = {c.sample for _ in range(3) for c in engine.plan(q, program="g", n=2, greedy=True).choices}
    assert len(samples) == 1


# ---------------------------------------------------------------------------- continuation


def _grow(engine: ReplayEngine, prompt: str, chunk: int, program: str | None) -> tuple[str, int, str, int]:
    text, tokens, first = "", 0, None
    while True:
        name, remember = (program, True) if program else engine.program_name(None, None, None)
        choice = engine.plan(prompt + text, max_tokens=chunk, program=name, remember=remember).choices[0]
        first = choice.sample if first is None else first
        text += choice.text
        tokens += choice.num_tokens
        if choice.finish_reason != "length":
            assert first is not None
            return text, tokens, choice.finish_reason, first


@pytest.mark.parametrize("chunk", [1, 3, 16])
@pytest.mark.parametrize("program", ["prog", None])
def test_chunks_reproduce_the_recorded_sample(engine: ReplayEngine, chunk: int, program: str | None) -> None:
    for q in engine.questions[:2]:
        prompt = f"Question: {q.question}\nAnswer: "
        for _ in range(len(q.samples)):
            text, tokens, finish, sample = _grow(engine, prompt, chunk, program)
            recorded = q.samples[sample]
            assert text == recorded.text
            assert tokens == recorded.num_tokens
            assert finish == (recorded.finish_reason or "stop")


def test_max_tokens_cuts_with_length(engine: ReplayEngine) -> None:
    q = engine.questions[0]
    choice = engine.plan(q.question, max_tokens=5, program="m").choices[0]
    assert choice.num_tokens == 5 and choice.finish_reason == "length"
    assert q.samples[choice.sample or 0].text.startswith(choice.text)


def test_a_cut_recording_cannot_be_continued_past_its_end(engine: ReplayEngine) -> None:
    q = engine.questions[2]
    choice = engine.plan(q.question, program="c").choices[0]
    assert choice.finish_reason == "length" and choice.num_tokens == 12
    with pytest.raises(RecordingEnds, match="maximum context length") as info:
        engine.plan(q.question + choice.text, program="c")
    assert isinstance(info.value, DynasorError) and isinstance(info.value, ValueError)


def test_stop_strings_cut_before_the_string(engine: ReplayEngine) -> None:
    q = engine.questions[0]
    checked = 0
    for _ in range(len(q.samples)):
        choice = engine.plan(q.question, program="s", stop=["= "]).choices[0]
        recorded = q.samples[choice.sample or 0].text
        if "= " not in recorded:
            assert choice.text == recorded
            continue
        checked += 1
        assert choice.finish_reason == "stop" and choice.stop_reason == "= "
        assert choice.text == recorded[: recorded.index("= ")]
        # The next chunk starts inside the piece holding the stop string and ends as recorded.
        rest = engine.plan(q.question + choice.text, program="s").choices[0]
        assert choice.text + rest.text == recorded
    assert checked >= 1


def test_logprobs_come_from_the_trace(engine: ReplayEngine) -> None:
    q = engine.questions[0]
    for _ in range(len(q.samples)):
        choice = engine.plan(q.question, program="lp", max_tokens=4, logprobs=True).choices[0]
        recorded = q.samples[choice.sample or 0]
        if recorded.token_logprobs is None:
            assert choice.logprobs is None
        else:
            assert choice.logprobs == recorded.token_logprobs[:4]


def test_token_ids_round_trip(engine: ReplayEngine) -> None:
    q = engine.questions[0]
    ids = engine.vocabulary.tokenize(q.question)
    choice = engine.plan(q.question, program="ids", max_tokens=6).choices[0]
    generated = engine.vocabulary.ids(choice.pieces)
    assert engine.vocabulary.decode(ids + generated) == q.question + choice.text
    with pytest.raises(NoMatch, match="never issued"):
        engine.vocabulary.decode([10**9])


# ---------------------------------------------------------------------------- probes


def _probe(engine: ReplayEngine, q: TraceQuestion, sample: int, offset: int) -> str | None:
    partial = engine.pieces(engine.questions.index(q), sample).prefix(offset)
    plan = engine.plan(q.question + "\n" + partial + PROBE_SUFFIX, program=f"probe-{sample}")
    choice = plan.choices[0]
    assert plan.probe and choice.probe and choice.finish_reason == "stop"
    assert choice.text.endswith(PROBE_CLOSE)
    return probe_answer(choice.text)


def test_probe_answers_follow_the_rule(engine: ReplayEngine) -> None:
    q = engine.questions[0]
    sample = q.samples[0]
    p = engine.pieces(0, 0)
    assert _probe(engine, q, 0, 4) == "3"  # the recorded probe at exactly that offset
    assert _probe(engine, q, 0, 10) is None  # a recorded null answers nothing
    assert "boxed{7}" not in p.prefix(len(p) - 2)
    assert _probe(engine, q, 0, len(p) - 2) is None  # "The answer is \boxed{" is cut off: nothing
    assert _probe(engine, q, 0, len(p)) == "7"  # extractable from the partial text
    assert _probe(engine, q, 0, 6) is None  # nothing to extract, nothing recorded
    assert sample.answer == "7"


def test_probe_without_a_prefix_answers_nothing(engine: ReplayEngine) -> None:
    q = engine.questions[1]
    plan = engine.plan(q.question + PROBE_SUFFIX, program="p0")
    assert plan.probe and probe_answer(plan.choices[0].text) is None


@needs_traces
def test_probes_never_invent_the_final_answer() -> None:
    qs = load_traces(TRACES / "math-qwen25math-sc8.jsonl")[:15]
    engine = ReplayEngine(qs)
    for qi, q in enumerate(qs):
        for si, s in enumerate(q.samples[:4]):
            p = engine.pieces(qi, si)
            for offset in range(0, len(p) + 1, max(1, len(p) // 12)):
                answer = engine.probe_answer(qi, si, offset)
                partial = p.prefix(offset)
                if answer is not None:
                    assert answer in partial  # taken from the partial text, never from the end
                if s.answer and s.answer not in partial:
                    assert answer != s.answer


# ---------------------------------------------------------------------------- rewards


def test_rewards_outcome_and_steps() -> None:
    q = TraceQuestion(
        id="r",
        question="Reward question: what is one plus one?",
        gold="2",
        samples=(
            _sample("one plus one is two so \\boxed{2}", reward=0.9),
            _sample("Step one. Step two. Step three. Done \\boxed{2}", step_rewards=(0.1, 0.5, 0.8, 0.9)),
            _sample("no reward here \\boxed{3}"),
        ),
    )
    engine = ReplayEngine([q])
    full = engine.rewards(q.question + "\n" + q.samples[0].text)
    assert full.scores == (0.9,) and full.approximation is None
    part = engine.rewards(q.question + "\n" + engine.pieces(0, 0).prefix(3))
    assert part.scores == (0.9,) and part.approximation is not None  # stated wherever it is used
    p = engine.pieces(0, 1)
    half = engine.rewards(q.question + "\n" + p.prefix(len(p) // 2))
    assert half.scores == (0.1, 0.5)
    with pytest.raises(NoMatch, match="no reward"):
        engine.rewards(q.question + "\n" + q.samples[2].text)
    with pytest.raises(NoMatch):
        engine.rewards(q.question)


def test_plans_are_fast_enough_for_many_questions() -> None:
    # 600 questions sharing most words: matching stays well under a millisecond per request.
    import time

    words = [
        "how",
        "many",
        "apples",
        "oranges",
        "pears",
        "does",
        "each",
        "friend",
        "have",
        "after",
        "sharing",
        "them",
        "equally",
    ]
    qs = [
        TraceQuestion(
            id=f"s{i}",
            question=" ".join(words[(i + j) % len(words)] for j in range(14)) + f" case {i}?",
            gold="1",
            samples=(_sample(f"Answer for case {i} is \\boxed{{{i}}}"),),
        )
        for i in range(600)
    ]
    engine = ReplayEngine(qs)
    prompts = [f"Q: {q.question}\nA:" for q in qs]
    for prompt in prompts[:50]:
        engine.plan(prompt, program="warm")
    started = time.perf_counter()
    for i, prompt in enumerate(itertools.islice(itertools.cycle(prompts), 500)):
        plan = engine.plan(prompt, program=f"t{i}")
        assert plan.question.id == qs[i % 600].id
    assert (time.perf_counter() - started) / 500 < 0.005
