"""One reply of the replay server: a plan sent as SSE events while the timing model produces it, or whole.

**logprobs** come from the trace (``token_logprobs``, ``top_logprobs``) when it recorded them for
every token of the sample; otherwise a choice's ``logprobs`` is ``null`` (nothing is made up) and
the choice carries its ``token_ids`` instead, so that clients counting tokens from logprobs (ours
does, for ``n > 1``) can still count them. The shape is the chat one (``{"content": [{"token",
"logprob", "bytes", "top_logprobs"}]}``) or the legacy one (``{"tokens", "token_logprobs",
"top_logprobs", "text_offset"}``): ``logprobs_shape="auto"`` answers each route in its OpenAI shape
(chat on chat, legacy on completions), ``"chat"`` or ``"legacy"`` forces one everywhere. Tokens are
the engine's pieces: the recorded tokens where the sample recorded them (``tokens``, as
``dynasor-client record`` does), else a split of its text. ``top_logprobs`` holds the first K
recorded alternatives (K asked by ``top_logprobs``, or by ``logprobs`` on completions; fewer when
fewer were recorded, an empty list when none were). A stream carries, in each event, the logprobs
of exactly the tokens that event adds, so they arrive at the timing model's pace, token by token.

**usage** is exact in the engine's token pieces: ``prompt_tokens`` as the engine counts them,
``completion_tokens`` the sum of every choice's pieces, ``prompt_tokens_details.cached_tokens`` the
prefix-cache hits of the timing model (for ``n > 1``, those of the first choice).

**replay_timings** (an extension field of this server, absent from OpenAI's API): every
non-streaming response body, and the usage chunk of a stream (``stream_options.include_usage``),
carries ``"replay_timings"``, a list with one object per choice (in choice order) of
``{"arrival", "first_token", "finish", "prompt_tokens", "output_tokens", "cached_prompt_tokens"}``:
the times in modelled seconds on the timing driver's clock (``first_token`` and ``finish`` are
``null`` for a choice that never got there), the token counts those of the timing model.

**Streaming** sends, at each flush, every token due since the previous flush in one SSE event (all
choices of the request together). ``flush_interval_s`` (default 0.05 s) is the least time between
two events of a stream, so a fast modelled GPU costs the server one event per stream per interval
rather than one per token. While the timing model falls behind real time (the server's one core is
the bottleneck) the interval widens, up to 1 s, and it narrows back once the replay keeps up
(:meth:`~._service.ReplayService.adapt_flush_interval`); ``dynasor-client bench replay`` measures
where that happens. The first event (the first token) and the last (the finish) are never held
back: a stream about to finish flushes token by token. A client that disconnects has its request
aborted at once (its KV freed in the timing model), whether it streams, waits for a whole response,
or is queued.

**Hand-built JSON.** A choice without logprobs or token ids, and the envelope of every body and
event, are written as JSON text directly rather than built as objects and encoded: this is the
per-token hot path of ``dynasor-client bench replay``, where encoding objects costs a large part of
the server's one core.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from starlette.types import Receive, Send

from ._plans import ReplayChoice, ReplayPlan
from ._timing_drivers import RequestHandle

if TYPE_CHECKING:
    from ._service import ReplayService

__all__ = ["Kind", "Reply", "dumps", "error_body", "send_error"]

Kind = Literal["completions", "chat"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
dumps = _ENCODER.encode
#: A string as a JSON string literal (the json module's C implementation).
_quote: Callable[[str], str] = json.encoder.encode_basestring
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def error_body(
    message: str, status: int = 400, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def send_error(
    send: Send, message: str, status: int = 400, code: str | None = None, param: str | None = None
) -> None:
    """Answer an ASGI request with an error (see :func:`error_body`)."""
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send(
        {"type": "http.response.body", "body": dumps(error_body(message, status, code, param)).encode()}
    )


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class Reply:
    """Sends one plan: as SSE events while the timing model produces it, or as one body at the end.

    Runs in the request's own task; a listener task cancels it the moment the client disconnects,
    and the request is then aborted in the timing model (its KV freed) at once.
    """

    def __init__(
        self,
        service: ReplayService,
        kind: Kind,
        rid: str,
        plan: ReplayPlan,
        handles: list[RequestHandle],
        *,
        stream: bool,
        want_logprobs: bool,
        top: int,
        shape: str,
        return_ids: bool,
        prompt_ids: list[int] | None,
        include_usage: bool,
    ) -> None:
        self.service = service
        self.chat = kind == "chat"
        self.rid = rid
        self.plan = plan
        self.handles = handles
        self.stream = stream
        self.want_logprobs = want_logprobs
        self.top = top
        self.shape = shape
        self.return_ids = return_ids
        self.prompt_ids = prompt_ids
        self.include_usage = include_usage
        self.created = int(time.time())
        self._plain = not (want_logprobs or return_ids)
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        self._head = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{self.created},'
            f'"model":{_quote(service.model)},"choices":['
        )

    def abort(self) -> None:
        for handle in self.handles:
            handle.abort()

    async def run(self, receive: Receive, send: Send) -> None:
        """Send the reply; abort the request if the client goes away first."""
        task = asyncio.current_task()
        done = False

        def gone(_: asyncio.Future[None]) -> None:
            if not done and task is not None:
                task.cancel()

        listener = asyncio.ensure_future(_disconnected(receive))
        listener.add_done_callback(gone)
        counters = self.service.counters
        if self.stream:
            counters.streams_open += 1
        try:
            if self.stream:
                await self._stream(send)
            else:
                await self._whole(send)
            done = True
        except asyncio.CancelledError:
            if not listener.done() or listener.cancelled():
                raise  # cancelled for another reason (shutdown): let it propagate
            counters.disconnects += 1
        except OSError:  # the connection dropped while sending
            counters.disconnects += 1
        finally:
            done = True
            listener.cancel()
            self.abort()
            if self.stream:
                counters.streams_open -= 1

    # ------------------------------------------------------------------ pieces of the body

    def _text(self, index: int, chars: int, start: int, end: int) -> str:
        """The text of pieces ``start:end`` (beginning ``chars`` characters into the output)."""
        choice = self.plan.choices[index]
        text = "".join(choice.pieces[start:end])
        if choice.stop_reason is not None:  # never past the cut before the stop string
            text = text[: max(0, len(choice.text) - chars)]
        return text

    def _part(
        self, index: int, chars: int, start: int, end: int, finished: bool, first: bool, text: str
    ) -> str:
        """One choice of a chunk (or of a whole body, ``first`` and ``finished``) as JSON."""
        choice = self.plan.choices[index]
        finish = f'"{choice.finish_reason}"' if finished else "null"
        if self._plain and (not finished or choice.stop_reason is None):  # the hot path: hand-built
            if self.chat:
                role = '"role":"assistant",' if first else ""
                key = "message" if not self.stream else "delta"
                return (
                    f'{{"index":{index},"{key}":{{{role}"content":{_quote(text)}}},'
                    f'"logprobs":null,"finish_reason":{finish}}}'
                )
            return f'{{"index":{index},"text":{_quote(text)},"logprobs":null,"finish_reason":{finish}}}'
        part: dict[str, Any] = {"index": index}
        if self.chat:
            content: dict[str, Any] = {"role": "assistant"} if first else {}
            content["content"] = text
            part["delta" if self.stream else "message"] = content
        else:
            part["text"] = text
        part["logprobs"] = self._logprobs(choice, chars, start, end) if self.want_logprobs else None
        part["finish_reason"] = choice.finish_reason if finished else None
        if finished and choice.stop_reason is not None:
            part["stop_reason"] = choice.stop_reason
        if self.return_ids or (self.want_logprobs and choice.logprobs is None):
            part["token_ids"] = self.service.engine.vocabulary.ids(choice.pieces[start:end])
        return dumps(part)

    def _logprobs(self, choice: ReplayChoice, chars: int, start: int, end: int) -> dict[str, Any] | None:
        if choice.logprobs is None:
            return None
        tokens = choice.pieces[start:end]
        values = choice.logprobs[start:end]
        tops = choice.top_logprobs[start:end] if choice.top_logprobs is not None and self.top else None
        if self.shape == "chat":
            content = []
            for i, (token, value) in enumerate(zip(tokens, values, strict=True)):
                alternatives = tops[i][: self.top] if tops is not None else ()
                content.append(
                    {
                        "token": token,
                        "logprob": value,
                        "bytes": list(token.encode("utf-8")),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}
                            for t, lp in alternatives
                        ],
                    }
                )
            return {"content": content}
        return {
            "tokens": list(tokens),
            "token_logprobs": list(values),
            "top_logprobs": [dict(alt[: self.top]) for alt in tops] if tops is not None else None,
            "text_offset": list(itertools.accumulate((len(t) for t in tokens[:-1]), initial=chars))
            if tokens
            else [],
        }

    def _usage(self) -> dict[str, Any]:
        completion = sum(c.num_tokens for c in self.plan.choices)
        prompt = self.plan.prompt_tokens
        cached = self.handles[0].cached_prompt_tokens if self.handles else 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def _timings(self) -> list[dict[str, Any]]:
        """The ``replay_timings`` extension field: each choice's modelled times and token counts."""
        return [
            {
                "arrival": h.arrival_time,
                "first_token": h.first_token_time,
                "finish": h.finish_time,
                "prompt_tokens": h.prompt_tokens,
                "output_tokens": h.output_tokens,
                "cached_prompt_tokens": h.cached_prompt_tokens,
            }
            for h in self.handles
        ]

    def _extra(self, fields: dict[str, Any]) -> bytes:
        """A chunk without choice content (usage, prompt token ids)."""
        chunk = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.service.model,
            **fields,
        }
        return f"data: {dumps(chunk)}\n\n".encode()

    # ------------------------------------------------------------------ whole body

    async def _whole(self, send: Send) -> None:
        driver = self.service.driver
        for handle in self.handles:
            while not handle.done:
                await handle.wait(handle.output_tokens - 1)
                if not driver.running and not handle.done:
                    await send_error(send, "the replay server is shutting down", 503)
                    return
        parts = []
        for i, choice in enumerate(self.plan.choices):
            parts.append(self._part(i, 0, 0, len(choice.pieces), True, True, choice.text))
        obj = "chat.completion" if self.chat else "text_completion"
        extra = f',"prompt_token_ids":{dumps(self.prompt_ids)}' if self.return_ids and self.prompt_ids else ""
        body = (
            f'{{"id":"{self.rid}","object":"{obj}","created":{self.created},'
            f'"model":{_quote(self.service.model)},"choices":[{",".join(parts)}],'
            f'"usage":{dumps(self._usage())},"replay_timings":{dumps(self._timings())}{extra}}}'
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ streaming

    async def _stream(self, send: Send) -> None:
        """SSE events: every token due since the last flush, all choices together, in one event."""
        handles, choices = self.handles, self.plan.choices
        count = len(choices)
        sent = [0] * count
        chars = [0] * count
        first = [True] * count
        open_ = list(range(count))
        driver = self.service.driver
        service = self.service
        loop = asyncio.get_running_loop()
        last = -1e9
        began, base = 0.0, 0  # time and tokens of the first event, for the lead's token rate
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        if self.return_ids and self.prompt_ids is not None:
            await send(_body(self._extra({"choices": [], "prompt_token_ids": self.prompt_ids})))
        while open_:
            lead = handles[open_[0]]
            interval = service.flush_interval_s
            if interval:  # at most one event per interval: the tokens due meanwhile go together
                now = loop.time()
                pause = last + interval - now
                # ... except near the end, so that the last token is never held back.
                if pause > 0 and lead.output_tokens - lead.generated > self._tokens_within(
                    pause, began, base
                ):
                    await asyncio.sleep(pause)
            if lead.generated <= sent[open_[0]] and not lead.done:
                await lead.wait(sent[open_[0]])
            parts = []
            still = []
            for i in open_:
                handle = handles[i]
                if handle.aborted:
                    return
                done = handle.finished
                pieces = len(choices[i].pieces)
                upto = pieces if done else min(handle.generated, pieces)
                if upto > sent[i] or done:
                    text = self._text(i, chars[i], sent[i], upto)
                    parts.append(self._part(i, chars[i], sent[i], upto, done, first[i], text))
                    first[i] = False
                    sent[i] = upto
                    chars[i] += len(text)
                if not done:
                    still.append(i)
            open_ = still
            if parts:
                last = loop.time()
                if not began:
                    began, base = last, lead.generated
                await send(_body(f"{self._head}{','.join(parts)}]}}\n\n".encode()))
            if open_ and not driver.running:
                return
        if self.include_usage:
            await send(
                _body(self._extra({"choices": [], "usage": self._usage(), "replay_timings": self._timings()}))
            )
        await send(_body(b"data: [DONE]\n\n"))
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _tokens_within(self, seconds: float, began: float, base: int) -> float:
        """About how many tokens the lead choice gains in ``seconds`` of wall time (plus one)."""
        driver = self.service.driver
        model, scale = driver.model, driver.time_scale
        done = model.iteration
        if scale > 0 and done >= 2:  # the modelled GPU's latest iteration time, in wall seconds
            step = (model.iteration_end(done - 1) - model.iteration_end(done - 2)) * scale
            return seconds / step + 1 if step > 0 else math.inf
        if not began:
            return 1.0
        elapsed = asyncio.get_running_loop().time() - began
        lead = self.handles[0]
        return (lead.generated - base) / max(elapsed, 1e-9) * seconds + 1
