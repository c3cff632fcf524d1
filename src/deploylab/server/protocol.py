"""OpenAI-compatible request and response schemas (the subset deploylab serves).

Request models are strict, as vLLM's and OpenAI's are: JSON types are not coerced
(`"stream": "yes"` and `"max_tokens": true` are errors), Infinity/NaN are rejected, and every
number has the range vLLM (or, where vLLM has none, OpenAI) allows. Unknown fields are ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_TOP_LOGPROBS = 20

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


class FieldError(ValueError):
    """A cross-field validation error that names the field at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class StrictModel(BaseModel):
    """Base of every request schema: strict JSON types, finite numbers, unknown fields ignored."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)


class StreamOptions(StrictModel):
    """`stream_options` of the OpenAI API."""

    include_usage: bool | None = False


class JsonSchemaFormat(StrictModel):
    """`response_format.json_schema`: a named JSON schema."""

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    """`response_format`: free text, any JSON object, or JSON matching a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


class FunctionDef(StrictModel):
    """A function a tool call may name, with a JSON schema of its arguments."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(StrictModel):
    """One entry of `tools`."""

    type: Literal["function"]
    function: FunctionDef


class NamedFunction(StrictModel):
    """`{"name": ...}` inside a named `tool_choice`."""

    name: str


class NamedToolChoice(StrictModel):
    """`tool_choice: {"type": "function", "function": {"name": ...}}`."""

    type: Literal["function"]
    function: NamedFunction


class ToolCallFunction(StrictModel):
    """The function part of a tool call in an assistant message."""

    name: str
    arguments: str


class ToolCall(StrictModel):
    """A tool call an assistant message made (in the conversation history)."""

    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class _Request(StrictModel):
    """Fields shared by completions and chat completions; unknown fields are ignored."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)  # 0: prompt logprobs only (echo)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stop: NonEmptyStr | list[NonEmptyStr] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=128)
    presence_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=0.0, ge=-2.0, le=2.0)
    user: str | None = None
    # vLLM extras that load tools send
    ignore_eos: bool | None = False
    min_tokens: int | None = Field(default=0, ge=0)
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    stop_token_ids: list[TokenId] | None = None

    response_format: ResponseFormat | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Request:
        if self.stream_options is not None and not self.stream:
            raise FieldError("stream_options", "stream_options can only be set when stream is true")
        return self

    def stop_list(self) -> list[str]:
        """The stop strings as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_Request):
    """`POST /v1/completions`."""

    prompt: (
        NonEmptyStr
        | Annotated[list[TokenId], Field(min_length=1)]
        | Annotated[list[NonEmptyStr], Field(min_length=1)]
        | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)]
    )
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool | None = False

    def prompt_list(self) -> list[str | list[int]]:
        """The prompt(s) as a list: one entry per prompt of a batch."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]  # type: ignore[list-item]
        return list(p)  # type: ignore[arg-type]


class TextPart(StrictModel):
    """A `{"type": "text", "text": ...}` content part."""

    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    """One chat message; `content` is a string or a list of text parts."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def text(self) -> str:
        """The message content as plain text."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Request):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _merge_max_tokens(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs requires logprobs to be true")
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style object id."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    """Unix time in seconds, as the `created` field."""
    return int(time.time())


def error_body(message: str, err_type: str, param: str | None, code: int) -> dict[str, Any]:
    """The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def field_range(schema: type[BaseModel], name: str) -> str | None:
    """The allowed range of a top-level numeric field, as "[0, 2]" or ">= 1" (None if unbounded)."""
    info = schema.model_fields.get(name)
    if info is None:
        return None
    lo = hi = None
    for m in info.metadata:
        if isinstance(m, Ge):
            lo = f"[{m.ge}"
        elif isinstance(m, Gt):
            lo = f"({m.gt}"
        elif isinstance(m, Le):
            hi = f"{m.le}]"
        elif isinstance(m, Lt):
            hi = f"{m.lt})"
    if lo and hi:
        return f"{lo}, {hi}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + lo[1:]
    if hi:
        return ("<= " if hi[-1] == "]" else "< ") + hi[:-1]
    return None


def _is_union_tag(part: Any) -> bool:
    """True for the union-member labels pydantic puts in error locations ("list[int]")."""
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def describe_validation_error(
    schema: type[BaseModel], exc: ValidationError
) -> tuple[str, str | None]:
    """A user-facing message and the field at fault (`param`) for a request's first error.

    Of a union's alternatives, the error that got deepest into the input is reported, a
    broken constraint before a wrong type."""
    errors = exc.errors()
    first = max(errors, key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    ctx = first.get("ctx") or {}
    err = ctx.get("error")
    if isinstance(err, FieldError):
        return f"Invalid field '{err.param}': {err}", err.param
    if first["type"] == "json_invalid":
        return f"Invalid JSON body: {ctx.get('error', first['msg'])}", None
    loc = [str(p) for p in first["loc"] if not _is_union_tag(p)]
    if not loc:
        if first["type"] == "model_type":
            return "The JSON body must be an object.", None
        return f"Invalid request: {first['msg']}", None
    param = ".".join(loc)
    msg = first["msg"]
    if first["type"] in _RANGE_ERRORS:
        allowed = field_range(schema, loc[0]) if len(loc) == 1 else None
        if allowed is not None:
            where = f"in {allowed}" if allowed[0] in "[(" else allowed
            msg = f"must be {where}, got {first['input']!r}"
    return f"Invalid field '{param}': {msg}", param
