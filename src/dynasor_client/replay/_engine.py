# Long because it is one job (planning a reply from the recordings): its rules, in this docstring.
"""The replay engine: what a request gets back, decided from recorded samples (no HTTP, no clock).

:class:`ReplayEngine` turns a request's text into a :class:`ReplayPlan`: the recorded question it
asks (:mod:`._matching`), the generated prefix it continues, and for each of its ``n`` choices the
token pieces (:mod:`._pieces`) to send, with their finish reason and recorded logprobs
(:mod:`._plans`). The server (:mod:`._service`) times the plan on the modelled GPU and sends it
(:mod:`._replies`).

**Programs.** A program is identified by the request's ``user`` field, else its ``X-Program-Id``
header (which :class:`~dynasor_client.Endpoint` sends inside ``program_scope``). A request without
either is a program of its own: named by its ``seed`` when it has one (so the same seeded request
gets the same samples every time), else a fresh random name.

**Draws.** Fresh samples (a prompt with no generated prefix) are drawn without replacement within a
program: the program's draws for a question walk through a permutation of the question's sample
indices, seeded by ``sha256(server seed, program, question id, cycle)``; the ``k``-th draw takes
element ``k mod S`` of permutation ``k div S`` (``S`` samples), so a sample repeats only after all
``S`` were drawn, and then in a new order. The sequence of samples a program draws for a question
depends only on (seed, program, question), never on arrival order; only *which* of a program's
concurrent requests gets which element of it follows their order of arrival. The ``n`` choices of
one request are ``n`` consecutive draws. ``temperature == 0`` draws nothing: every choice is the
first sample of the ``(seed, "greedy", question)`` permutation, as a greedy model would repeat itself.
The engine keeps the draw counts of the 100,000 most recently active programs.

**Continuations** (a prompt with a generated prefix) do not draw. They continue the sample whose
text starts with the prefix (:mod:`._matching`). Several samples can share a prefix (short programs
often do); then the candidates are ordered: first the samples of this program whose last chunk
ended exactly there (several such take turns), then the other samples this program drew (most
recent draw first), then the rest by index; requests without a program count as one program here
(not for draws). ``n > 1`` choices take the candidates in that order, cyclically. So a program
growing its samples chunk by chunk gets each one back exactly, unless two of its samples share a
prefix *and* stand at the same point of it at once: then they may swap, each trajectory still
ending as a recorded sample, with token counts that can differ by the few tokens where the two
samples' pieces split the shared text differently. A prefix that ends inside a piece (text cut at
a stop string, for instance) continues with the rest of that piece as one token: counts then add up
to within one token per such cut.

**Outputs.** A choice sends the sample's pieces from the prefix on, until the sample ends (finish
reason: the recorded one, ``"stop"`` when none was recorded), ``max_tokens`` pieces were sent
(``"length"``), or a ``stop`` string appears in the text sent (``"stop"``; the text ends before the
stop string, and the piece completing it is counted, as vLLM does). Continuing a sample already at
its end sends nothing more, but a sample whose recording was cut (finish reason ``"length"``)
cannot be continued past its end at all: :class:`RecordingEnds`, which the server answers as a
full context. ``temperature`` (other than 0), ``top_p`` and the other sampling settings do not
change a recorded sample.

**Probes.** A prompt whose remainder (after the question) ends with
:data:`~dynasor_client._probe.PROBE_SUFFIX` (trailing whitespace allowed) after a sample prefix of
``t`` pieces is a probe. Its answer is, in order: the sample's recorded probe at offset ``t``
exactly (a recorded ``null`` answers nothing); else the last answer extractable from the partial
text (by default ``\\boxed{}``, "the answer is ...", GSM8K's ``#### N``: ``probe_fallback="explicit"``;
``"math"`` adds the last number; ``"none"`` extracts nothing; an answer cut off by the end of the
partial text, such as an unclosed box, does not count); else nothing. The reply is the answer
followed by :data:`~dynasor_client._probe.PROBE_CLOSE` (``}\\n\\]``), one token per unit
(:func:`._pieces.count_units`), finish reason ``"stop"``. A probe never answers with the sample's
final answer unless the partial text contains it. Probes draw nothing.

**Prompt tokens** (``usage.prompt_tokens``): the question's recorded ``prompt_tokens`` (estimated as
``ceil(characters / 4)`` when not recorded), plus the prefix's pieces, plus ``ceil(characters / 4)``
for all other text (chat or template text, the probe suffix). The same count of per-token keys goes
to the timing model's prefix cache: samples of one question share the question's keys, and a
continuation shares the keys of the chunks before it. A token-id prompt is counted the same way,
from its decoded text, not by its number of ids.

**Token ids.** The engine has a vocabulary of its own: every distinct piece (or unit of text given
to ``/tokenize``) gets an id when first seen. Generated ids (``return_token_ids``) are those of the
pieces sent, and a token-id prompt is decoded with the vocabulary and then served as its text, so
token-id continuation is exact. Ids are meaningless to any real tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .._exceptions import DynasorError
from .._probe import PROBE_CLOSE, PROBE_SUFFIX
from ..traces import TraceQuestion, TraceSample
from ._matching import NoMatch, QuestionIndex, SampleIndex
from ._pieces import Pieces, estimate_tokens, split_units
from ._plans import ReplayChoice, ReplayPlan, RewardScores
from ._probe_answers import ProbeFallback, extract_partial, extractors
from ._vocabulary import Vocabulary

__all__ = [
    "NoMatch",
    "ProbeFallback",
    "RecordingEnds",
    "ReplayChoice",
    "ReplayEngine",
    "ReplayPlan",
    "RewardScores",
    "Vocabulary",
]

MAX_PROGRAMS = 100_000


class RecordingEnds(DynasorError, ValueError):
    """A continuation past the end of a sample whose recording was cut at its length limit."""


def _stable_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(slots=True)
class _Program:
    """What the engine remembers of one program."""

    draws: dict[int, int] = field(default_factory=dict)
    """Question -> fresh draws made."""
    drawn_at: dict[tuple[int, int], int] = field(default_factory=dict)
    """(question, sample) -> when it was last drawn (a counter shared by all programs)."""
    frontier: dict[tuple[int, int], int] = field(default_factory=dict)
    """(question, sample) -> characters of it served so far (where its next chunk starts)."""
    turns: dict[tuple[int, int], int] = field(default_factory=dict)


class ReplayEngine:
    """Plans replies to requests from recorded questions (see the module docs for every rule).

    Args:
        questions: the recorded questions (:func:`~dynasor_client.traces.load_traces`).
        seed: the server seed of all draws.
        probe_fallback: how a probe's answer is found when no probe was recorded at its offset.
    """

    def __init__(
        self,
        questions: Sequence[TraceQuestion],
        *,
        seed: int = 0,
        probe_fallback: ProbeFallback = "explicit",
        max_programs: int = MAX_PROGRAMS,
    ) -> None:
        if not questions:
            raise ValueError("the replay engine needs at least one recorded question")
        if probe_fallback not in ("explicit", "math", "none"):
            raise ValueError(f"probe_fallback must be 'explicit', 'math' or 'none', got {probe_fallback!r}")
        self.questions = tuple(questions)
        self.seed = seed
        self.probe_fallback: ProbeFallback = probe_fallback
        self.vocabulary = Vocabulary()
        self._index = QuestionIndex([q.question for q in self.questions])
        self._sample_indexes: dict[int, SampleIndex] = {}
        self._programs: OrderedDict[str, _Program] = OrderedDict()
        self._anonymous = _Program()
        self._draw_clock = itertools.count()
        self._max_programs = max_programs
        self._extractors = extractors(probe_fallback)
        # Per-token keys for the timing model's prefix cache: one integer range per question's prompt
        # and per sample, so keys never collide and slices of them are cheap.
        self._question_tokens: list[int] = []
        self._question_base: list[int] = []
        self._sample_base: list[list[int]] = []
        base = 0
        for q in self.questions:
            tokens = q.prompt_tokens if q.prompt_tokens is not None else estimate_tokens(q.question)
            self._question_tokens.append(tokens)
            self._question_base.append(base)
            base += tokens
            bases = []
            for s in q.samples:
                bases.append(base)
                base += max(s.num_tokens, 1) + 1
            self._sample_base.append(bases)
        self._pieces_cache = functools.lru_cache(maxsize=8192)(self._make_pieces)
        self._permutation = functools.lru_cache(maxsize=65536)(self._make_permutation)

    # ------------------------------------------------------------------ recorded data

    def pieces(self, question: int, sample: int) -> Pieces:
        """A sample's text as pieces (cached)."""
        return self._pieces_cache(question, sample)

    def _make_pieces(self, question: int, sample: int) -> Pieces:
        s = self.questions[question].samples[sample]
        return Pieces.of_tokens(s.text, s.num_tokens, s.tokens)

    def _samples(self, question: int) -> SampleIndex:
        index = self._sample_indexes.get(question)
        if index is None:
            count = len(self.questions[question].samples)
            index = SampleIndex(count, functools.partial(self.pieces, question))
            self._sample_indexes[question] = index
        return index

    def _make_permutation(self, program: str, question: int, cycle: int) -> tuple[int, ...]:
        q = self.questions[question]
        rng = np.random.default_rng(_stable_int(self.seed, program, q.id, cycle))
        return tuple(int(i) for i in rng.permutation(len(q.samples)))

    def draw_order(self, program: str, question: int, count: int) -> list[int]:
        """The first ``count`` samples ``program`` draws for ``question`` (see the module docs)."""
        size = len(self.questions[question].samples)
        return [self._permutation(program, question, k // size)[k % size] for k in range(count)]

    # ------------------------------------------------------------------ programs

    @staticmethod
    def program_name(user: str | None, header: str | None, request_seed: int | None) -> tuple[str, bool]:
        """The program of a request and whether its draws are remembered (see the module docs)."""
        if user:
            return f"user:{user}", True
        if header:
            return f"user:{header}", True
        if request_seed is not None:
            return f"seed:{request_seed}", False
        return f"anonymous:{uuid.uuid4().hex}", False

    def _program(self, name: str) -> _Program:
        state = self._programs.get(name)
        if state is None:
            state = self._programs[name] = _Program()
            if len(self._programs) > self._max_programs:
                self._programs.popitem(last=False)
        else:
            self._programs.move_to_end(name)
        return state

    # ------------------------------------------------------------------ planning

    def locate(self, text: str) -> tuple[int, int, int]:
        """``(question, start, end)``: the question ``text`` asks and where (NoMatch if none)."""
        span = self._index.find(text)
        if span is None:
            raise NoMatch(
                "the prompt contains no recorded question: the replay server answers only prompts that "
                f"contain the text of one of its {len(self.questions)} recorded questions"
            )
        return span.question, span.start, span.end

    def plan(
        self,
        text: str,
        *,
        n: int = 1,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        program: str | None = None,
        remember: bool = True,
        greedy: bool = False,
        logprobs: bool = False,
    ) -> ReplayPlan:
        """The reply to a request whose text (prompt, or joined chat contents) is ``text``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        qi, q_start, q_end = self.locate(text)
        question = self.questions[qi]
        remainder = text[q_end:]
        tail = ""
        stripped = remainder.rstrip()
        probe = stripped.endswith(PROBE_SUFFIX)
        if probe:
            tail = remainder[len(stripped) - len(PROBE_SUFFIX) :]
            remainder = stripped[: len(stripped) - len(PROBE_SUFFIX)]
        match = self._samples(qi).find(remainder) if question.samples else None
        prefix_chars = match.chars if match is not None else 0
        name = program or f"anonymous:{uuid.uuid4().hex}"
        # Requests without a program draw afresh each time, but share what continuations need.
        state = self._program(name) if remember else self._anonymous

        if match is not None and match.candidates:
            ordered = self._order_candidates(qi, state, match.candidates, not probe, prefix_chars)
        else:
            ordered = []

        if probe:
            sample, k = ordered[0] if ordered else (None, 0)
            choice = self._probe_choice(qi, sample, k, max_tokens)
            choices: tuple[ReplayChoice, ...] = (choice,) * n
        elif ordered:
            going = [c for c in ordered if not self._cut_here(qi, c[0], prefix_chars)]
            if not going:
                sample = ordered[0][0]
                raise RecordingEnds(
                    f"This model's maximum context length is reached: the recorded sample "
                    f"{question.id!r}/{sample} was cut after {question.samples[sample].num_tokens} tokens "
                    "(finish_reason 'length') and cannot be continued past its end"
                )
            choices = tuple(
                self._sample_choice(qi, *going[i % len(going)], prefix_chars, max_tokens, stop, logprobs)
                for i in range(n)
            )
        else:
            if not question.samples:
                raise NoMatch(f"question {question.id!r} has no recorded samples")
            if greedy:
                picks = [self._permutation(f"{self.seed}:greedy", qi, 0)[0]] * n
            else:
                first = state.draws.get(qi, 0) if remember else 0
                size = len(question.samples)
                picks = [self._permutation(name, qi, k // size)[k % size] for k in range(first, first + n)]
                if remember:
                    state.draws[qi] = first + n
                for sample in picks:
                    state.drawn_at[(qi, sample)] = next(self._draw_clock)
            choices = tuple(self._sample_choice(qi, s, 0, 0, max_tokens, stop, logprobs) for s in picks)
        if not probe:
            for choice in choices:
                if choice.sample is not None:
                    state.frontier[(qi, choice.sample)] = prefix_chars + len(choice.text)

        prefix_sample, prefix_k = ordered[0] if ordered else (None, 0)
        keys = self._prompt_keys(
            text, qi, q_start, q_end, remainder, prefix_chars, prefix_sample, prefix_k, probe, tail
        )
        return ReplayPlan(
            question=question,
            question_index=qi,
            program=name,
            prompt_keys=keys,
            choices=choices,
            prefix_tokens=prefix_k,
            probe=probe,
        )

    def _order_candidates(
        self,
        qi: int,
        state: _Program,
        candidates: tuple[tuple[int, int], ...],
        rotate: bool,
        prefix_chars: int,
    ) -> list[tuple[int, int]]:
        """Candidates in the order of the continuation rule (see the module docs)."""
        if len(candidates) == 1:
            return list(candidates)
        frontier, drawn_at = state.frontier, state.drawn_at
        here = [c for c in candidates if frontier.get((qi, c[0])) == prefix_chars]
        mine = sorted(
            (c for c in candidates if (qi, c[0]) in drawn_at and c not in here),
            key=lambda c: -drawn_at[(qi, c[0])],
        )
        others = [c for c in candidates if (qi, c[0]) not in drawn_at]
        if len(here) > 1 and rotate:
            key = (qi, prefix_chars)
            turn = state.turns.get(key, 0)
            state.turns[key] = turn + 1
            turn %= len(here)
            here = here[turn:] + here[:turn]
        return here + mine + others

    def _cut_here(self, qi: int, sample: int, prefix_chars: int) -> bool:
        """Whether the prefix is the whole of a sample whose recording was cut (finish "length")."""
        recorded = self.questions[qi].samples[sample]
        return recorded.finish_reason == "length" and prefix_chars >= len(recorded.text)

    def _sample_choice(
        self,
        qi: int,
        sample: int,
        k: int,
        prefix_chars: int,
        max_tokens: int | None,
        stop: Sequence[str],
        logprobs: bool,
    ) -> ReplayChoice:
        recorded = self.questions[qi].samples[sample]
        p = self.pieces(qi, sample)
        if p.offsets[k] == prefix_chars:
            rest = p.pieces[k:]
        else:  # the prefix ends inside piece k: its rest is the first token sent
            rest = (p.text[prefix_chars : p.offsets[k + 1]], *p.pieces[k + 1 :])
        finish = recorded.finish_reason or "stop"
        stop_reason: str | None = None
        if max_tokens is not None and max_tokens < len(rest):
            rest, finish = rest[:max_tokens], "length"
        text = "".join(rest)
        if stop:
            cut = _first_stop(text, stop)
            if cut is not None:
                at, string = cut
                end = at + len(string)  # pieces up to the one completing the stop string are counted
                count = next(
                    i for i, total in enumerate(itertools.accumulate(map(len, rest)), 1) if total >= end
                )
                rest, text, finish, stop_reason = rest[:count], text[:at], "stop", string
        lp, top = self._logprobs(recorded, k, len(rest)) if logprobs else (None, None)
        return ReplayChoice(
            sample=sample,
            start=k,
            pieces=rest,
            text=text,
            finish_reason=finish,
            stop_reason=stop_reason,
            logprobs=lp,
            top_logprobs=top,
        )

    @staticmethod
    def _logprobs(
        sample: TraceSample, start: int, count: int
    ) -> tuple[tuple[float, ...] | None, tuple[tuple[tuple[str, float], ...], ...] | None]:
        lp = sample.token_logprobs
        if lp is None or len(lp) != sample.num_tokens:
            return None, None
        top = sample.top_logprobs
        top_slice = top[start : start + count] if top is not None and len(top) == sample.num_tokens else None
        return lp[start : start + count], top_slice

    def probe_answer(self, question: int, sample: int | None, offset: int) -> str | None:
        """The answer a probe after ``offset`` pieces of ``sample`` gets (see the module docs)."""
        if sample is None:
            return None
        recorded = self.questions[question].samples[sample]
        if recorded.probes:
            for at, answer in recorded.probes:
                if at == offset:
                    return answer
        if not self._extractors or offset == 0:
            return None
        return extract_partial(self._extractors, self.pieces(question, sample).prefix(offset))

    def _probe_choice(self, qi: int, sample: int | None, offset: int, max_tokens: int | None) -> ReplayChoice:
        answer = self.probe_answer(qi, sample, offset)
        reply = f"{answer or ''}{PROBE_CLOSE}"
        pieces = tuple(split_units(reply))
        finish = "stop"
        if max_tokens is not None and max_tokens < len(pieces):
            pieces, finish = pieces[:max_tokens], "length"
        return ReplayChoice(
            sample=sample,
            start=offset,
            pieces=pieces,
            text="".join(pieces),
            finish_reason=finish,
            probe=True,
        )

    def _prompt_keys(
        self,
        text: str,
        qi: int,
        q_start: int,
        q_end: int,
        remainder: str,
        prefix_chars: int,
        sample: int | None,
        k: int,
        probe: bool,
        tail: str,
    ) -> list[Hashable]:
        keys: list[Hashable] = []
        head = text[:q_start]
        if head:
            keys += _text_keys("head", head)
        base = self._question_base[qi]
        keys += range(base, base + self._question_tokens[qi])
        between = remainder[: len(remainder) - prefix_chars]
        if between:
            keys += _text_keys("between", between)
        if sample is not None and prefix_chars:
            p = self.pieces(qi, sample)
            sbase = self._sample_base[qi][sample]
            keys += range(sbase, sbase + k)
            if p.offsets[k] != prefix_chars:  # the prefix ends inside piece k: one token of its own
                keys.append(("partial", qi, sample, prefix_chars))
        if probe:
            keys += _text_keys("probe", PROBE_SUFFIX)
            if tail:
                keys += _text_keys("tail", tail)
        return keys

    # ------------------------------------------------------------------ rewards

    def rewards(self, text: str) -> RewardScores:
        """Reward-model scores of ``text`` (a question plus a prefix of one of its samples).

        With recorded ``step_rewards`` (``m`` of them for a sample of ``N`` tokens) a prefix of ``k``
        tokens gets the first ``ceil(m * k / N)`` step scores (steps assumed of equal token length).
        With one outcome ``reward`` only, every prefix gets ``[reward]``: the outcome reward of the
        whole sample stands for each of its prefixes (an approximation, stated in
        :attr:`RewardScores.approximation`).
        """
        qi, q_start, q_end = self.locate(text)
        match = self._samples(qi).find(text[q_end:])
        if not match.candidates:
            raise NoMatch(
                "the input continues none of the question's recorded samples: rewards are recorded per "
                "sample, so score a question followed by (a prefix of) one of its samples"
            )
        sample, k = match.candidates[0]
        recorded = self.questions[qi].samples[sample]
        p = self.pieces(qi, sample)
        keys = self._prompt_keys(text, qi, q_start, q_end, text[q_end:], match.chars, sample, k, False, "")
        if p.offsets[k] != match.chars:
            k += 1  # a partial piece counts as reached
        total = max(len(p), 1)
        if recorded.step_rewards:
            m = len(recorded.step_rewards)
            steps = max(1, -(-m * k // total))
            scores = recorded.step_rewards[:steps]
            note = (
                None
                if k >= total
                else "a prefix gets the first ceil(m*k/N) recorded step rewards (steps assumed equally long)"
            )
            return RewardScores(self.questions[qi].id, sample, k, scores, len(keys), note)
        if recorded.reward is not None:
            note = None if k >= total else "outcome reward of the whole sample given to this prefix"
            return RewardScores(self.questions[qi].id, sample, k, (recorded.reward,), len(keys), note)
        raise NoMatch(f"question {self.questions[qi].id!r} sample {sample}: no reward was recorded")


def _text_keys(kind: str, text: str) -> list[Hashable]:
    h = hash(text)
    return [(kind, h, i) for i in range(estimate_tokens(text))]


def _first_stop(text: str, stop: Sequence[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for string in stop:
        if not string:
            continue
        at = text.find(string)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, string)
    return best
