"""Retry policy: the one place requests are retried (the openai SDK's own retries are switched off).

Retried: 429 (waiting at least what ``Retry-After`` asks), 500/502/503/504, connections dropped
mid-response and timeouts. A connection that cannot be opened at all (refused, unreachable, DNS) is
retried only up to ``connect_attempts`` attempts in all (default 2: one retry after the first
backoff), so a server that is down fails within about a second rather than after every backoff.
Never retried: other 4xx, malformed responses and TLS failures, which would fail the same way again.
Attempts and total time are both bounded.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from .._exceptions import EndpointTimeout, EndpointUnavailable, RateLimited, ServerError
from .._log import get_logger
from ._errors import ConnectFailed, TLSVerificationFailed

T = TypeVar("T")
log = get_logger("dynasor_client.endpoints")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, TLSVerificationFailed):
        return False
    if isinstance(exc, RateLimited | EndpointTimeout | EndpointUnavailable):
        return True
    return isinstance(exc, ServerError) and exc.status in RETRYABLE_STATUS


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by total time.

    ``max_attempts=1`` disables retries. A ``Retry-After`` longer than ``max_backoff_s`` or than the
    time left gives up at once (raising :class:`RateLimited` with ``retry_after`` set) rather than
    sleeping past the caller's budget. ``connect_attempts`` bounds the attempts of a request whose
    connection cannot be opened at all (:class:`ConnectFailed`; at most ``max_attempts``).
    """

    max_attempts: int = 5
    max_total_s: float = 120.0
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    jitter_s: float = 0.5
    connect_attempts: int = 2

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.connect_attempts < 1:
            raise ValueError("max_attempts and connect_attempts must be >= 1")
        if self.max_total_s <= 0 or self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retry times must be positive")

    def _wait(self, state: RetryCallState) -> float:
        backoff = min(
            wait_exponential(multiplier=self.initial_backoff_s, max=self.max_backoff_s)(state)
            + wait_random(0, self.jitter_s)(state),
            self.max_backoff_s,
        )
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            return max(exc.retry_after, 0.0)
        return backoff

    def _stop(self, state: RetryCallState, offset_s: float = 0.0) -> bool:
        # offset_s: time spent before tenacity took over (the first attempt, made outside it).
        elapsed = (state.seconds_since_start or 0.0) + offset_s
        if stop_after_attempt(self.max_attempts)(state) or elapsed >= self.max_total_s:
            return True
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ConnectFailed) and state.attempt_number >= self.connect_attempts:
            return True
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            too_long = exc.retry_after > self.max_backoff_s
            past_budget = elapsed + exc.retry_after > self.max_total_s
            return too_long or past_budget
        return False

    async def call(self, fn: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run ``fn`` under this policy; the last error is re-raised as it was."""
        # The first attempt runs bare: building tenacity's machinery for every request cost more
        # client CPU than the rest of the runtime together. It takes over only after a retryable
        # failure, that failure replayed as its attempt 1 (same attempt numbers, waits and log).
        started = time.monotonic()
        try:
            return await fn()
        except Exception as exc:
            if self.max_attempts <= 1 or not is_retryable(exc):
                raise
            if isinstance(exc, ConnectFailed) and self.connect_attempts <= 1:
                raise
            first: BaseException | None = exc
        offset_s = time.monotonic() - started

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            sleep = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "%s failed (attempt %d): %s; retrying in %.2fs", what, state.attempt_number, exc, sleep
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            stop=functools.partial(self._stop, offset_s=offset_s),
            wait=self._wait,
            reraise=True,
            before_sleep=before_sleep,
        )

        async def run() -> T:  # tenacity treats plain callables (lambdas) as synchronous
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error
            return await fn()

        return await retrying(run)
