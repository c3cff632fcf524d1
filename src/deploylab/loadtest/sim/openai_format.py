"""OpenAI wire format for the simulator's responses, pre-encoded per request for speed.

Each streamed token is one server-sent event holding one word from a fixed list of common
English words (one token each in GPT-style tokenizers, and one token by the simulator's own
counting rule), so clients that count tokens themselves agree with `usage`.
"""

from __future__ import annotations

import json
from typing import Any

WORDS = (
    " the", " of", " and", " to", " in", " a", " is", " that", " for", " it",
    " as", " was", " with", " be", " by", " on", " not", " he", " this", " are",
    " or", " his", " from", " at", " which", " but", " have", " an", " had", " they",
)  # fmt: skip
_WORDS_JSON = tuple(json.dumps(w).encode() for w in WORDS)
DONE = b"data: [DONE]\n\n"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def output_text(tokens: int) -> str:
    """The text of `tokens` generated tokens."""
    n = len(WORDS)
    return "".join(WORDS[k % n] for k in range(tokens))


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """The `usage` object, with vLLM's prompt_tokens_details.cached_tokens."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class StreamFormat:
    """Byte templates for one request's server-sent events."""

    __slots__ = ("_head", "_first_head", "_mid", "_ids", "chat", "_framed")

    def __init__(self, request_id: str, model: str, created: int, chat: bool) -> None:
        self.chat = chat
        self._framed: list[bytes | None] = [None] * len(WORDS)
        obj = "chat.completion.chunk" if chat else "text_completion"
        self._ids = (
            f'"id":"{request_id}","object":"{obj}","created":{created},"model":{json.dumps(model)}'
        )
        if chat:
            self._first_head = (
                "data: {"
                + self._ids
                + ',"choices":[{"index":0,"delta":{"role":"assistant","content":'
            ).encode()
            self._head = (
                "data: {" + self._ids + ',"choices":[{"index":0,"delta":{"content":'
            ).encode()
            self._mid = b'},"logprobs":null,"finish_reason":'
        else:
            self._head = ("data: {" + self._ids + ',"choices":[{"index":0,"text":').encode()
            self._first_head = self._head
            self._mid = b',"logprobs":null,"finish_reason":'

    def token(
        self, index: int, finish_reason: str | None = None, usage_of: tuple[int, int] | None = None
    ) -> bytes:
        """The event carrying output token `index` (the last one names its finish reason).

        With `usage_of=(prompt_tokens, completion_tokens)` the event also carries the usage so
        far (vLLM's `continuous_usage_stats`)."""
        head = self._first_head if index == 0 else self._head
        fin = b"null" if finish_reason is None else b'"%b"' % finish_reason.encode()
        tail = b""
        if usage_of is not None:
            prompt, done = usage_of
            tail = b',"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}' % (
                prompt,
                done,
                prompt + done,
            )
        word = _WORDS_JSON[index % len(WORDS)]
        return b"%b%b%b%b}]%b}\n\n" % (head, word, self._mid, fin, tail)

    def framed_token(self, index: int) -> bytes:
        """A middle token's event (index >= 1) framed as an HTTP chunk; cached per word."""
        slot = index % len(WORDS)
        data = self._framed[slot]
        if data is None:
            event = self.token(slot or len(WORDS))
            data = self._framed[slot] = b"%x\r\n%b\r\n" % (len(event), event)
        return data

    def usage_event(self, prompt: int, completion: int, cached: int) -> bytes:
        """The final event with empty choices and the usage (stream_options.include_usage)."""
        body = _dumps(usage(prompt, completion, cached)).decode()
        return ("data: {" + self._ids + ',"choices":[],"usage":' + body + "}\n\n").encode()


def full_response(
    request_id: str,
    model: str,
    created: int,
    chat: bool,
    tokens: int,
    finish_reason: str,
    prompt_tokens: int,
    cached_tokens: int,
) -> bytes:
    """A complete non-streamed completion or chat completion."""
    text = output_text(tokens)
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return _dumps(
        {
            "id": request_id,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": model,
            "choices": [choice],
            "usage": usage(prompt_tokens, tokens, cached_tokens),
        }
    )


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error object."""
    kinds = {
        400: "BadRequestError",
        404: "NotFoundError",
        429: "RateLimitError",
        500: "InternalServerError",
        503: "ServiceUnavailableError",
    }
    return {
        "error": {
            "message": message,
            "type": kinds.get(status, "APIError"),
            "param": param,
            "code": status,
        }
    }
