"""Rounds of a sampling program: how many samples each round draws, and when each is sent.

:func:`round_sizes` plans the rounds (one per point where the stop rule may fire);
:class:`RoundPlan` sends them and hands their results back in order, one round at a time, so the
program checks its rule after each round exactly as planned. Without a deadline a round is sent
when the program asks for it: the rounds run one after the other and no sample is drawn past a
check that stops. A check the rule cannot pass is skipped (``may_stop``: even if every sample to
come agreed with the leading answer, the rule would not fire there): its round goes out with the
next one, so the program draws the same samples and stops at the same check in fewer rounds. With
a deadline two more things change:

- **Lookahead.** The next rounds' requests go out while the current one runs, up to ``lookahead``
  samples past the current check (2 by default), so a program that goes on finds its next round
  already running instead of starting it. The results are still read in the planned order (the
  rule sees the same samples in the same order as without lookahead: no bias towards the samples
  that finish first); requests still in flight when the program stops are cancelled, which aborts
  them on the server.
- **Fitting.** The plan measures how long a round takes (request sent to answer) and expects the
  next to take ``margin`` times the longest so far. When the time left holds fewer rounds than
  remain, it sends as many rounds at once as it takes to finish in the rounds that fit (still read
  one by one, so the program can stop at any of their checks); when not even one more round fits,
  the plan ends (``out_of_time``): the answer so far comes back now, not at the deadline, and the
  server stops spending tokens on a program that would miss anyway.

Neither applies while the context is :meth:`~dynasor_client.algorithms.ProgramContext.saturated`
(its runtime's window is full, so a request sent now waits behind other programs' requests): then
a round goes out only when its turn comes, as without a deadline. Work sent before it is needed
would only lengthen the queue and slow every program's current round. A program still stops when
its next round is expected after its deadline.

**Racing** (``reading="finishing"``, with or without a deadline): every sample is its own request,
the lookahead (:data:`RACE_LOOKAHEAD` by default) goes out with each round, and the samples are
read in the order they *finish*: a check reads the first samples to finish (as many as the check
counts), so it waits for the fastest of the samples sent rather than the slowest of its own. The
rule then sees the shorter samples first, which may change its answers (``docs/online-benchmark.md``,
*Racing*, measures it per dataset); planned-order reading stays the default. With a deadline, when
the rounds left do not fit in the time left, all of them go out at once (not a few rounds per
wave): a racing check waits only for as many samples as it counts, never for the slowest.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import itertools
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Literal

from ..certainty import Observations, StopRule
from ..certainty.rules import checkpoints

if TYPE_CHECKING:
    from ..endpoints import Choice, Generation, Message, SamplingParams
    from ..program import ProgramContext

RoundSchedule = Literal["auto", "detect", "doubling", "one"] | Sequence[int]
Reading = Literal["planned", "finishing"]
"""The order a program reads its samples in: as planned (default), or as they finish (racing)."""

DEADLINE_LOOKAHEAD = 2
"""Samples sent ahead of the current check when the program has a deadline. Chosen on the online
benchmark over SVAMP's *train* questions (``bench online --split train``; the reported figures use
the test questions), ``ours`` at SLO scale 3, share of deadlines met with lookahead 0, 2 and 4:
92.0%, 95.4%, 95.0% at twice the naive capacity; 86.2%, 92.7%, 89.8% at 2.4x; 84.1%, 87.0%, 84.1%
at 2.8x; at 0.75x capacity and SLO scale 1.5: 78.4%, 85.8%, 84.8% (more samples ahead, more load).
Sending nothing early while the runtime is saturated raised 89.5% to 92.7% at 2.4x and 33.2% to
68.7% at 5x (overload). Rechecked once programs skipped the checks they cannot pass, lookahead 0
against 2: 94.6% / 96.0% at 2x, 87.5% / 91.3% at 2.5x, 82.8% / 85.6% at 3x, and 80.9% / 88.7% at
0.75x and SLO scale 1.5."""

DEADLINE_MARGIN = 1.0
"""How many times the longest round so far the next round is expected to take. The longest so far
is already a cautious estimate: on the train split (as above, lookahead 2), margin 1.0 against 1.25
met 80.4% / 73.5% of the deadlines at 0.75x capacity and SLO scale 1.25, 90.2% / 85.8% at 1.5,
94.1% / 90.7% at 1.75, and at SLO scale 3 96.6% / 95.4% at 2x capacity, 93.0% / 92.7% at 2.4x,
87.3% / 87.0% at 2.8x; margins 0.9 and 0.8 met 87.3% at 0.75x and SLO scale 1.5."""


RACE_LOOKAHEAD = 2
"""Samples sent past the current check when racing (``reading="finishing"``), with or without a
deadline: each check reads the first of its count plus this many samples to finish (see
``docs/online-benchmark.md``, *Racing*, for how it was chosen)."""


def round_sizes(schedule: RoundSchedule, n: int, detect: int = 5, rule: StopRule | None = None) -> list[int]:
    """Samples per round, summing to ``n``: ``"auto"`` = one round per point where ``rule`` may fire
    (so no sample is drawn past a check that would have stopped), ``"detect"`` = detect then the
    rest (the paper), ``"doubling"`` = detect, then doubling, ``"one"`` = one at a time, or sizes."""
    if schedule == "auto":
        if rule is None:
            raise ValueError("round schedule 'auto' needs the stop rule")
        points = checkpoints(rule, n)
        sizes = [b - a for a, b in zip((0, *points), points, strict=False)]
    elif schedule == "detect":
        sizes = [detect, n - detect]
    elif schedule == "doubling":
        sizes, size = [], detect
        while sum(sizes) < n:
            sizes.append(size)
            size *= 2
    elif schedule == "one":
        sizes = [1] * n
    elif isinstance(schedule, str):
        raise ValueError(f"unknown round schedule {schedule!r}: 'detect', 'doubling', 'one' or sizes")
    else:
        sizes = list(schedule)
    out, total = [], 0
    for size in sizes:
        if size < 1 and total < n:
            raise ValueError(f"round sizes must be >= 1, got {list(sizes)}")
        take = min(size, n - total)
        if take > 0:
            out.append(take)
            total += take
    if total < n:
        out.append(n - total)
    return out


def chat_draw(
    context: ProgramContext, messages: Sequence[Message], params: SamplingParams
) -> Callable[[int, int], Awaitable[Generation]]:
    """:class:`RoundPlan`'s ``draw`` for a program sampling answers to ``messages``: the request for
    samples ``first`` on takes ``params.for_sample(first)``. A server repeats a seeded request's
    samples, so a round that kept the seed would draw an earlier round's samples again."""

    def draw(first: int, size: int) -> Awaitable[Generation]:
        return context.generate(messages=messages, n=size, params=params.for_sample(first))

    return draw


def rule_may_stop(
    rule: StopRule, context: ProgramContext, observations: Callable[[], Observations]
) -> Callable[[int], bool]:
    """:class:`RoundPlan`'s ``may_stop`` for a program running ``rule`` on ``observations()`` (its
    samples so far). Under a token limit every check stays: the budget is checked there too."""

    def may_stop(count: int) -> bool:
        if context.tokens_left() is not None:
            return True
        return bool(rule.may_fire(observations(), count)[0])

    return may_stop


class RoundPlan:
    """Send the rounds ``sizes`` of a program and read their samples in order (module docs).

    ``async with plan.rounds(draw) as results: async for choices in results: ...`` where
    ``draw(first, k)`` requests the program's samples ``first`` to ``first + k - 1`` (seeded from
    ``first``, as :func:`chat_draw` does, so no request repeats another's samples) and ``choices``
    are one round's samples, in the order sent.
    A round sent partly ahead goes out in parts (the lookahead's, then the rest), one request each.
    ``lookahead`` (samples sent ahead of the current check) defaults to 0 without a deadline and
    :data:`DEADLINE_LOOKAHEAD` with one; when racing (``reading="finishing"``: one request per
    sample, each round's samples the first to finish, see the module docs) to :data:`RACE_LOOKAHEAD`.
    ``may_stop(count)``: whether the program's rule could stop it once it holds ``count`` samples,
    given those it holds now (``StopRule.may_fire``); a round whose check it could not pass goes out
    with the next one.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        context: ProgramContext,
        *,
        margin: float = DEADLINE_MARGIN,
        lookahead: int | None = None,
        may_stop: Callable[[int], bool] | None = None,
        reading: Reading = "planned",
    ) -> None:
        if reading not in ("planned", "finishing"):
            raise ValueError(f"reading must be 'planned' or 'finishing', got {reading!r}")
        if any(size < 1 for size in sizes):
            raise ValueError(f"round sizes must be >= 1, got {list(sizes)}")
        if not margin >= 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        if lookahead is not None and lookahead < 0:
            raise ValueError(f"lookahead must be >= 0, got {lookahead}")
        self.planned, self.margin = tuple(sizes), margin
        self.lookahead, self.reading = lookahead, reading
        self.out_of_time = False  #: the plan ended because no further round fits the deadline
        self.ahead = 0  #: samples sent before their turn to meet the deadline (beyond the lookahead)
        self.sent: list[int] = []  #: sizes of the requests sent, in order (cancelled ones included)
        self.skipped = 0  #: checks skipped because the rule could not have stopped there
        self._context, self._may_stop = context, may_stop

    @contextlib.asynccontextmanager
    async def rounds(
        self, draw: Callable[[int, int], Awaitable[Generation]]
    ) -> AsyncIterator[AsyncIterator[list[Choice]]]:
        """The rounds' samples in planned order; leaving cancels the requests still in flight."""
        tasks: list[asyncio.Task[Generation]] = []
        results = self._results(draw, tasks)
        try:
            yield results
        finally:
            await results.aclose()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _results(
        self, draw: Callable[[int, int], Awaitable[Generation]], tasks: list[asyncio.Task[Generation]]
    ) -> AsyncGenerator[list[Choice], None]:
        sizes, context = self.planned, self._context
        ends = list(itertools.accumulate(sizes))  # samples drawn once each round is in
        deadline = context.seconds_left() is not None
        racing = self.reading == "finishing"
        lookahead = self.lookahead
        if lookahead is None:
            lookahead = RACE_LOOKAHEAD if racing else DEADLINE_LOOKAHEAD if deadline else 0
        finished: list[int] = []  # racing: requests (one sample each) in the order they finished
        read = 0  # racing: samples read so far
        # requests (indices into tasks) by the round they start in
        pieces: list[list[int]] = [[] for _ in sizes]
        sent_at: list[float] = []  # seconds left when each request was sent
        answered_at: dict[int, float] = {}  # ... and when its answer came
        sent = 0  # samples sent so far
        piece_s = 0.0  # the longest request so far
        last = 0  # the last planned round read with the current one (the checks between are skipped)

        def answered(index: int, _: object) -> None:
            answered_at.setdefault(index, context.seconds_left() or 0.0)

        def send_until(wanted: int) -> None:
            nonlocal sent
            while sent < min(wanted, ends[-1]):
                round_ = bisect.bisect_right(ends, sent)
                # a request per round read; per sample when racing, so each is read as it finishes
                size = 1 if racing else min(ends[max(round_, last)], wanted) - sent
                task = asyncio.ensure_future(draw(sent, size))
                index = len(tasks)
                sent_at.append(context.seconds_left() or 0.0)
                task.add_done_callback(functools.partial(answered, index))
                tasks.append(task)
                pieces[round_].append(index)
                self.sent.append(size)
                sent += size

        round_ = 0
        while round_ < len(sizes):
            # Checks the rule cannot pass are skipped: their samples go out with the next round's.
            last = round_
            while last + 1 < len(sizes) and self._may_stop is not None and not self._may_stop(ends[last]):
                last += 1
            self.skipped += last - round_
            # Requests sent now would wait behind other programs': send nothing before its turn.
            saturated = context.saturated()
            wanted = ends[last] + (0 if saturated else lookahead)  # this round's, and the lookahead
            left = context.seconds_left()
            if left is not None and piece_s > 0:
                expected_s = piece_s * self.margin
                # This round, sent now or earlier, is expected to answer after the deadline: stop.
                group = [index for piece in pieces[round_ : last + 1] for index in piece]
                if (sent_at[group[-1]] if sent >= ends[last] else left) < expected_s:
                    self.out_of_time = True
                    return
                fits = int(left // expected_s)  # new rounds that would still answer in time
                if fits == 0:
                    wanted = sent  # send nothing new; what is in flight is expected in time
                elif not saturated:
                    together = math.ceil((len(sizes) - last) / fits)  # rounds per wave that fits
                    if racing and together > 1:  # a check waits only for its count: all go out
                        together = len(sizes) - last
                    by_deadline = ends[min(len(sizes), last + together) - 1]
                    self.ahead += max(0, by_deadline - max(wanted, sent))
                    wanted = max(wanted, by_deadline)
            send_until(wanted)
            choices: list[Choice] = []
            if racing:  # this check's samples: the next to finish, up to its count
                await self._finishing(tasks, finished, ends[last])
                order, read = finished[read : ends[last]], ends[last]
            else:
                order = list(itertools.chain.from_iterable(pieces[round_ : last + 1]))
            for index in order:
                choices.extend((await tasks[index]).choices)
                if deadline:
                    piece_s = max(
                        piece_s, sent_at[index] - answered_at.get(index, context.seconds_left() or 0.0)
                    )
            yield choices
            round_ = last + 1

    @staticmethod
    async def _finishing(tasks: Sequence[asyncio.Task[Generation]], finished: list[int], count: int) -> None:
        """Wait until ``count`` requests have finished; ``finished`` (extended in place) lists them in
        the order they finished (those finishing at the same moment in the order sent)."""
        while len(finished) < count:
            done = set(finished)
            waiting = [task for index, task in enumerate(tasks) if index not in done]
            if not waiting:
                raise RuntimeError(f"racing: {count} samples wanted, {len(tasks)} sent")  # a bug
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finished.extend(index for index, task in enumerate(tasks) if index not in done and task.done())
