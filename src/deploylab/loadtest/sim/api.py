"""Parse and check OpenAI completion / chat-completion request bodies for the simulator."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deploylab.loadtest.sim.tokens import PromptCounter


class RequestError(Exception):
    """A request the simulator rejects with an HTTP error status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(slots=True)
class ParsedBody:
    """What the simulator needs from a request body."""

    model: str | None
    chat: bool
    stream: bool
    include_usage: bool
    continuous_usage: bool  # vLLM's stream_options.continuous_usage_stats: usage in every event
    max_tokens: int | None
    ignore_eos: bool
    min_tokens: int
    tokens: Sequence[Any]  # token ids, or the text's pseudo-tokens (see tokens.py)


def _int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestError(400, f"{key} must be an integer >= {minimum}, got {value!r}", key)
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(400, f"{key} must be true or false, got {value!r}", key)
    return value


def _prompt_tokens(prompt: Any, counter: PromptCounter) -> Sequence[Any]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return counter.text(prompt)
    if isinstance(prompt, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return prompt
    raise RequestError(
        400,
        "prompt must be a string or a list of token ids (the simulator takes one prompt per "
        "request)",
        "prompt",
    )


_PSEUDO = PromptCounter()


def parse_body(raw: bytes, chat: bool, counter: PromptCounter = _PSEUDO) -> ParsedBody:
    """Parse a /v1/completions (chat=False) or /v1/chat/completions body; `counter` counts
    the prompt (a real tokenizer, or the documented approximation)."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, "model must be a string", "model")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "messages must be a non-empty list", "messages")
        if not all(isinstance(m, dict) for m in messages):
            raise RequestError(400, "each message must be an object", "messages")
        tokens: Sequence[Any] = counter.chat(messages)
        max_tokens = _int(body, "max_completion_tokens", 1)
        if max_tokens is None:
            max_tokens = _int(body, "max_tokens", 1)
    else:
        if "prompt" not in body:
            raise RequestError(400, "prompt is required", "prompt")
        tokens = _prompt_tokens(body["prompt"], counter)
        max_tokens = _int(body, "max_tokens", 1)
    if not tokens:
        raise RequestError(400, "the prompt is empty", "prompt")
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise RequestError(400, "the simulator supports n=1 only", "n")
    stream = _bool(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, "stream_options must be an object", "stream_options")
    return ParsedBody(
        model=model,
        chat=chat,
        stream=stream,
        include_usage=stream and _bool(options, "include_usage"),
        continuous_usage=stream and _bool(options, "continuous_usage_stats"),
        max_tokens=max_tokens,
        ignore_eos=_bool(body, "ignore_eos"),
        min_tokens=_int(body, "min_tokens", 0) or 0,
        tokens=tokens,
    )
