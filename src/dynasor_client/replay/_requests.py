"""What the replay server accepts: every route's request body as a pydantic model.

:func:`parse` validates a raw body against one of the models below. A body that fails is answered
400 in OpenAI's error shape with the message of its first error (fields in the order declared here)
and the field as ``param``. Fields not declared are accepted and ignored (``model``, ``top_p`` and
the other sampling settings, vLLM's extras), as are malformed values of the fields read leniently
(``stream``, ``user``, ``seed``, ``temperature``, ``stream_options``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import ErrorDetails
from starlette.types import Receive, Scope

__all__ = [
    "MAX_N",
    "MAX_TOP_LOGPROBS",
    "ChatRequest",
    "ClientGone",
    "CompletionRequest",
    "DetokenizeRequest",
    "GenerationRequest",
    "PoolingRequest",
    "RequestError",
    "TokenizeRequest",
    "header",
    "parse",
    "read_body",
]

MAX_N = 1024
MAX_TOP_LOGPROBS = 20


class RequestError(Exception):
    """A request the server refuses, answered with OpenAI's error shape."""

    def __init__(self, message: str, *, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class ClientGone(Exception):
    """The client disconnected before its request was read."""


async def read_body(receive: Receive) -> bytes:
    """The whole body of an ASGI request (:class:`ClientGone` if the client leaves first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def header(scope: Scope, name: bytes) -> str | None:
    """An ASGI request's header (``name`` in lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


# ---------------------------------------------------------------------------- models

Body = TypeVar("Body", bound="_Body")


class _Body(BaseModel):
    """A JSON object body; the class variables say how each kind of failure is answered."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    not_json: ClassVar[str] = "the request body is not valid JSON"
    not_object: ClassVar[str] = "the request body must be a JSON object"
    refusals: ClassVar[dict[str, tuple[str, str | None]]] = {}
    """Error location (field names, ``*`` for a list index) -> (message, ``param``); the message
    may name the refused value as ``{input!r}``. The longest matching prefix of a location counts;
    a validator's own ``ValueError`` message wins over the table."""

    @classmethod
    def refusal(cls, error: ErrorDetails) -> RequestError:
        """The 400 answering one validation error."""
        loc = error["loc"]
        if error["type"] == "json_invalid":
            return RequestError(cls.not_json)
        if not loc:
            return RequestError(cls.not_object)
        parts = ["*" if isinstance(p, int) else p for p in loc]
        for end in range(len(parts), 0, -1):
            found = cls.refusals.get(".".join(parts[:end]))
            if found is not None:
                template, param = found
                break
        else:  # pragma: no cover - every field that can fail is in the table
            template, param = f"invalid '{loc[0]}'", str(loc[0])
        cause = (error.get("ctx") or {}).get("error")
        message = str(cause) if isinstance(cause, ValueError) else template.format(input=error["input"])
        return RequestError(message, param=param)


def parse(model: type[Body], raw: bytes) -> Body:
    """``raw`` validated as ``model`` (:class:`RequestError` answering its first error)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise model.refusal(exc.errors(include_url=False)[0]) from None


class Message(BaseModel):
    """A chat message; only its content is read (``role`` may be anything, or missing)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    content: str | list[Any] | None = None

    @property
    def text(self) -> str:
        """The content as text: a list of parts gives its ``text`` parts, joined."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text"
        )


_MESSAGES_REFUSALS: dict[str, tuple[str, str | None]] = {
    "messages": ("'messages' must be a non-empty list", "messages"),
    "messages.*": ("each message must be an object with 'role' and 'content'", "messages"),
    "messages.*.content": ("message content must be a string or a list of parts", "messages"),
}

Count = Annotated[int, Strict(), Field(ge=1, le=MAX_N)]
TokenLimit = Annotated[int, Strict(), Field(ge=1)]
TopLogprobs = Annotated[int, Strict(), Field(ge=0, le=MAX_TOP_LOGPROBS)]
Stop = StrictStr | list[StrictStr] | None
Truthy = Annotated[bool, BeforeValidator(lambda value: bool(value))]
"""Any JSON value, read for its truth (as the server always has: ``"stream": 1`` streams)."""


class GenerationRequest(_Body):
    """What ``/v1/completions`` and ``/v1/chat/completions`` share (see the subclasses)."""

    not_object: ClassVar[str] = "the request body must be a JSON object"
    not_json: ClassVar[str] = not_object

    echo: Any = None
    suffix: Any = None
    n: Count | None = None
    stream: Truthy = False
    stream_options: Any = None
    return_token_ids: Truthy = False
    temperature: Any = None
    user: Any = None
    seed: Any = None

    @field_validator("echo", "suffix")
    @classmethod
    def _refused(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(f"'{info.field_name}' is not supported by the replay server")
        return value

    @property
    def choices(self) -> int:
        return 1 if self.n is None else self.n

    @property
    def include_usage(self) -> bool:
        options = self.stream_options
        return self.stream and isinstance(options, dict) and bool(options.get("include_usage"))

    @property
    def greedy(self) -> bool:
        """``temperature`` is the number 0."""
        t = self.temperature
        return isinstance(t, int | float) and not isinstance(t, bool) and t == 0

    @property
    def program_user(self) -> str | None:
        return self.user if isinstance(self.user, str) else None

    @property
    def program_seed(self) -> int | None:
        seed = self.seed
        return seed if isinstance(seed, int) and not isinstance(seed, bool) else None

    # Defined by each route's model:

    @property
    def token_limit(self) -> int | None:
        raise NotImplementedError

    @property
    def stops(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def logprobs_wanted(self) -> tuple[bool, int]:
        """(logprobs wanted, how many top alternatives)."""
        raise NotImplementedError


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


def _one_prompt(value: Any) -> Any:
    """One prompt: a non-empty string or list of token ids (a list holding one is unwrapped)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise ValueError("'prompt' is empty")
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
        return value
    if isinstance(value, list) and len(value) > 1:
        raise ValueError("the replay server takes one prompt per request")
    raise ValueError("'prompt' must be a string or a list of token ids")


_GENERATION_REFUSALS: dict[str, tuple[str, str | None]] = {
    "n": (f"'n' must be an integer from 1 to {MAX_N}, got {{input!r}}", "n"),
    "max_tokens": ("'max_tokens' must be a positive integer, got {input!r}", "max_tokens"),
    "stop": ("'stop' must be a string or a list of strings", "stop"),
}


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``: one prompt, text or token ids (see the server's module docs)."""

    refusals: ClassVar[dict[str, tuple[str, str | None]]] = {
        **_GENERATION_REFUSALS,
        "logprobs": (f"'logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}", "logprobs"),
        "prompt": ("'prompt' must be a string or a list of token ids", "prompt"),
    }

    max_tokens: TokenLimit | None = None
    stop: Stop = None
    logprobs: StrictBool | TopLogprobs | None = None
    prompt: Annotated[str | list[int], BeforeValidator(_one_prompt)]

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def stops(self) -> tuple[str, ...]:
        return _stops(self.stop)

    @property
    def logprobs_wanted(self) -> tuple[bool, int]:
        value = self.logprobs
        if value is None or value is False:
            return False, 0
        return True, 0 if value is True else value


class ChatRequest(GenerationRequest):
    """``POST /v1/chat/completions``: the text is the messages' contents joined by newlines."""

    refusals: ClassVar[dict[str, tuple[str, str | None]]] = {
        **_GENERATION_REFUSALS,
        "max_completion_tokens": (
            "'max_completion_tokens' must be a positive integer, got {input!r}",
            "max_completion_tokens",
        ),
        "top_logprobs": (
            f"'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {{input!r}}",
            "top_logprobs",
        ),
        **_MESSAGES_REFUSALS,
    }

    max_completion_tokens: TokenLimit | None = None
    max_tokens: TokenLimit | None = None
    stop: Stop = None
    logprobs: Any = None
    top_logprobs: TopLogprobs | None = None
    messages: Annotated[list[Message], Field(min_length=1)]

    @field_validator("max_tokens", mode="wrap")
    @classmethod
    def _unless_max_completion_tokens(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        # max_completion_tokens, when given, replaces max_tokens, which is then not read at all.
        if info.data.get("max_completion_tokens") is not None:
            return None
        return handler(value)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def stops(self) -> tuple[str, ...]:
        return _stops(self.stop)

    @property
    def logprobs_wanted(self) -> tuple[bool, int]:
        top = self.top_logprobs or 0
        return bool(self.logprobs) or top > 0, top

    @property
    def text(self) -> str:
        return "\n".join(m.text for m in self.messages)


_INPUT_REFUSAL = ("'input' must be a string or a list of strings (or give 'messages')", "input")


class PoolingRequest(_Body):
    """``POST /pooling``: ``input`` (or ``prompt``), a string or a list of them, else ``messages``."""

    refusals: ClassVar[dict[str, tuple[str, str | None]]] = {
        "input": _INPUT_REFUSAL,
        "prompt": _INPUT_REFUSAL,
        **_MESSAGES_REFUSALS,
    }

    input_: StrictStr | list[StrictStr] | None = Field(None, validation_alias=AliasChoices("input", "prompt"))
    messages: list[Message] | None = None

    @property
    def texts(self) -> list[str]:
        """The inputs to score (:class:`RequestError` when there are none)."""
        raw = self.input_
        if raw is None and self.messages is not None:
            raw = "\n".join(m.text for m in self.messages)
        inputs = [raw] if isinstance(raw, str) else raw
        if not inputs:
            raise RequestError(_INPUT_REFUSAL[0], param=_INPUT_REFUSAL[1])
        return inputs


_TOKENIZE_REFUSAL = (
    "give the text to tokenize as 'prompt' (or 'content'); chat messages are not supported",
    None,
)


class TokenizeRequest(_Body):
    """``POST /tokenize``: the text as ``prompt`` (vLLM) or ``content`` (llama.cpp)."""

    not_object: ClassVar[str] = _TOKENIZE_REFUSAL[0]
    refusals: ClassVar[dict[str, tuple[str, str | None]]] = {
        "prompt": _TOKENIZE_REFUSAL,
        "content": _TOKENIZE_REFUSAL,
    }

    text: str = Field(validation_alias=AliasChoices("prompt", "content"))


_DETOKENIZE_REFUSAL = ("give 'tokens' as a list of ids", None)


class DetokenizeRequest(_Body):
    """``POST /detokenize``: ``tokens``, ids this server issued."""

    not_object: ClassVar[str] = _DETOKENIZE_REFUSAL[0]
    refusals: ClassVar[dict[str, tuple[str, str | None]]] = {"tokens": _DETOKENIZE_REFUSAL}

    tokens: list[Any]
