"""Key budgets and usage in Redis, shared by every proxy replica on it (``--redis URL``).

Per budgeted key (by its SHA-256 digest, never the key), in one hash slot (``{digest}``):

- ``PREFIX:{digest}:usage`` (hash): ``spent``, ``reserved`` (tokens held by requests in flight),
  ``requests``, ``expired`` (reservations released by their TTL);
- ``PREFIX:{digest}:held`` (sorted set): the reservations in flight, scored by when they expire
  (ms, Redis's clock); ``PREFIX:{digest}:amounts`` (hash): each one's tokens;
- ``PREFIX:{digest}:done:ID``: a settled reservation (a retried settlement is not billed twice).

Each step is one Lua script (atomic on the server): :data:`RESERVE` first drops the expired
reservations, then grants ``want`` tokens when ``limit - spent - reserved`` has them; when it has
fewer it answers "wait" while other reservations stand in the way (the store polls again), else
grants what is left when at least ``least`` (the request is shrunk to it) or refuses (429).
:data:`SETTLE` releases a reservation and adds what the request was billed; :data:`REFRESH` pushes
the expiry of a replica's reservations in flight (every ``ttl_s / 3``); :data:`LOOK` drops the
expired reservations and reads the usage (stats, and each replica's sweep of its keys). A replica
that dies stops refreshing: its reservations expire ``ttl_s`` later and the next script on the key
releases them.

When Redis cannot be reached, a budgeted key's request is refused with 503
``budget_store_unavailable`` (fail closed); an unlimited key's request runs and its usage is added
when Redis answers again (logged when it never does).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from .._log import get_logger
from ._errors import ProxyError
from ._keys import Budget, KeyAccount
from ._store import Lease, Spending

log = get_logger("dynasor_client.proxy")

_PURGE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function purge(now)
  local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
  local freed = 0
  for _, id in ipairs(gone) do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], id) or '0')
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[1], id)
  end
  if #gone > 0 then
    redis.call('HINCRBY', KEYS[3], 'reserved', -freed)
    redis.call('HINCRBY', KEYS[3], 'expired', #gone)
  end
end
local function usage()
  local u = redis.call('HMGET', KEYS[3], 'spent', 'reserved', 'requests')
  return tonumber(u[1] or '0'), tonumber(u[2] or '0'), tonumber(u[3] or '0')
end
"""

RESERVE = (
    _PURGE
    + """
-- KEYS: held, amounts, usage; ARGV: id, want, least, limit, ttl_ms, wait (1: answer 0 rather
-- than shrink or refuse while other reservations stand in the way)
local now = now_ms()
purge(now)
local spent, reserved = usage()
local want, least, limit = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local free = limit - spent - reserved
local grant = want
if free < want then
  if ARGV[6] == '1' and reserved > 0 then return {0, spent, reserved} end
  if free < least then return {-1, spent, reserved} end
  grant = free
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[5]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], grant)
redis.call('HINCRBY', KEYS[3], 'reserved', grant)
return {grant, spent, reserved}
"""
)

SETTLE = (
    _PURGE
    + """
-- KEYS: held, amounts, usage, done marker; ARGV: id, tokens, marker_ttl_ms
if redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[3]) == false then return 0 end
purge(now_ms())
local amount = redis.call('HGET', KEYS[2], ARGV[1])
if amount then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'reserved', -tonumber(amount))
end
redis.call('HINCRBY', KEYS[3], 'spent', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'requests', 1)
return 1
"""
)

REFRESH = """
-- KEYS: held; ARGV: ttl_ms, ids...: push the expiry of those still held
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local kept = 0
for i = 2, #ARGV do kept = kept + redis.call('ZADD', KEYS[1], 'XX', 'CH', until_ms, ARGV[i]) end
return kept
"""

LOOK = (
    _PURGE
    + """
-- KEYS: held, amounts, usage
purge(now_ms())
local spent, reserved, requests = usage()
return {spent, reserved, requests}
"""
)

_UNAVAILABLE = "budget_store_unavailable"


class RedisStore:
    """Key budgets and usage in Redis (module docs).

    Args:
        url: ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
        ttl_s: how long a reservation outlives the last refresh of its replica.
        prefix: the first part of every Redis key (several proxies' budgets on one Redis).
        timeout_s: seconds to connect to Redis and to wait for each answer.
        wait_s: how long a request waits for other requests' reservations to settle before it is
            shrunk to what is left, or refused.
        accounts: the budgeted keys whose expired reservations this replica drops every
            ``ttl_s / 3`` (with those it has served).
    """

    shared = True

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 30.0,
        prefix: str = "dynasor",
        timeout_s: float = 2.0,
        wait_s: float = 30.0,
        accounts: Sequence[KeyAccount] = (),
    ) -> None:
        if not ttl_s > 0:
            raise ValueError("the reservation TTL must be > 0 seconds")
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.prefix, self.wait_s = prefix, wait_s
        self.redis: Redis = Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
        )
        self._reserve = self.redis.register_script(RESERVE)
        self._settle = self.redis.register_script(SETTLE)
        self._refresh = self.redis.register_script(REFRESH)
        self._look = self.redis.register_script(LOOK)
        self._live: dict[str, Lease] = {}  # this replica's reservations in flight, by id
        #: The budgeted keys whose expired reservations this replica drops, by digest.
        self._known = {a.digest: a for a in accounts if a.budget.limit is not None}
        self._settling: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None

    def keys(self, digest: str) -> list[str]:
        """The Redis keys of one API key's budget: held, amounts, usage."""
        base = f"{self.prefix}:{{{digest}}}"
        return [f"{base}:held", f"{base}:amounts", f"{base}:usage"]

    async def start(self) -> None:
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            log.error("Redis cannot be reached (%s): budgeted keys get 503 until it can", exc)
        self._keeper = asyncio.create_task(self._keep())

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=self.ttl_ms / 1000)
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self.redis.aclose()

    async def reserve(self, account: KeyAccount, want: int, least: int) -> Lease:
        limit = account.budget.limit
        if limit is None:  # an unlimited key: its usage is only counted (settle)
            return Lease(account, None, id=uuid.uuid4().hex)
        self._known[account.digest] = account
        lease_id, waited, pause = uuid.uuid4().hex, time.monotonic() + self.wait_s, 0.005
        while True:
            wait = time.monotonic() < waited
            args: list[str | int] = [lease_id, want, least, limit, self.ttl_ms, int(wait)]
            try:
                granted, spent, reserved = await self._reserve(keys=self.keys(account.digest), args=args)
            except (RedisError, OSError) as exc:
                raise _unavailable(account, exc) from exc
            if granted > 0:
                lease = Lease(account, Budget(int(granted)), int(granted), lease_id)
                self._live[lease_id] = lease
                return lease
            if granted < 0:
                raise ProxyError(
                    f"API key {account.fingerprint} has {max(limit - spent - reserved, 0)} of its "
                    f"{limit} tokens left ({spent} spent, {reserved} reserved by requests in flight "
                    f"on every replica); this request needs at least {least}.",
                    status=429,
                    type="insufficient_quota",
                    code="insufficient_quota",
                )
            await asyncio.sleep(pause)  # others' reservations stand in the way: ask again
            pause = min(pause * 2, 0.1)

    def settle(self, lease: Lease, tokens: int, charged: int) -> None:
        lease.account.requests += 1
        task = asyncio.get_running_loop().create_task(self.settle_now(lease, tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def settle_now(self, lease: Lease, tokens: int) -> None:
        """:meth:`settle` in this task: retried for a while, then logged (the reservation then
        expires with its TTL, and the tokens are not counted)."""
        tokens = max(tokens, 0)
        held, amounts, usage = self.keys(lease.account.digest)
        done = f"{self.prefix}:{{{lease.account.digest}}}:done:{lease.id}"
        args: list[str | int] = [lease.id, tokens, max(self.ttl_ms * 4, 60_000)]
        pause, tries = 0.05, 6
        try:
            for attempt in range(tries):
                try:
                    await self._settle(keys=[held, amounts, usage, done], args=args)
                    return
                except (RedisError, OSError) as exc:
                    if attempt == tries - 1:
                        log.error(
                            "could not settle %d tokens of key %s in Redis (%s): not counted; its "
                            "reservation expires with its TTL",
                            tokens,
                            lease.account.fingerprint,
                            exc,
                        )
                        return
                    await asyncio.sleep(pause)
                    pause *= 2
        finally:
            self._live.pop(lease.id, None)

    async def spending(self, accounts: Sequence[KeyAccount]) -> Mapping[str, Spending]:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for account in accounts:
                    await self._look(keys=self.keys(account.digest), client=pipe)
                answers = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ProxyError(
                f"the budget store (Redis) cannot be reached: {type(exc).__name__}",
                status=503,
                code=_UNAVAILABLE,
            ) from exc
        return {
            a.fingerprint: Spending(int(requests), int(spent), int(reserved), a.budget.limit)
            for a, (spent, reserved, requests) in zip(accounts, answers, strict=True)
        }

    async def _keep(self) -> None:
        """Every ``ttl_s / 3``: refresh this replica's reservations in flight, and drop the expired
        ones (a dead replica's) of the keys it serves."""
        while True:
            await asyncio.sleep(self.ttl_ms / 3000)
            by_key: dict[str, list[str]] = {}
            for lease in list(self._live.values()):
                by_key.setdefault(lease.account.digest, []).append(lease.id)
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for digest, ids in by_key.items():
                        await self._refresh(keys=self.keys(digest)[:1], args=[self.ttl_ms, *ids], client=pipe)
                    for digest in self._known:
                        await self._look(keys=self.keys(digest), client=pipe)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("could not refresh the reservations in Redis: %s", exc)


def _unavailable(account: KeyAccount, exc: BaseException) -> ProxyError:
    return ProxyError(
        f"the budget store (Redis) cannot be reached, so key {account.fingerprint}'s token budget "
        f"cannot be checked: the request is refused ({type(exc).__name__}). Retry later.",
        status=503,
        code=_UNAVAILABLE,
        headers={"retry-after": "1"},
    )
