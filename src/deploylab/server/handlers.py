"""Turn validated OpenAI requests into engine calls, and engine deltas into responses."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from deploylab.engine.sampling_params import SamplingParams
from deploylab.errors import DeploylabError, InvalidRequestError, PromptTooLongError
from deploylab.server.errors import api_error
from deploylab.server.metrics import ServerMetrics
from deploylab.server.protocol import ChatCompletionRequest, CompletionRequest, new_id, now


@dataclass
class Prepared:
    """A request ready for the engine: prompt ids, sampling params and response framing."""

    request_id: str
    chat: bool
    prompt_ids: list[int]
    params: SamplingParams
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs in the response
    echo_text: str = ""


@dataclass
class _Timing:
    """Latencies of one request as the server saw them, for the histograms."""

    start: float = field(default_factory=time.perf_counter)
    first: float | None = None
    last: float | None = None
    gaps: list[float] = field(default_factory=list)

    def tokens(self, n: int) -> None:
        t = time.perf_counter()
        if n <= 0:
            return
        if self.first is None:
            self.first = t
        elif self.last is not None:
            self.gaps.append(t - self.last)
        self.last = t


class GenerationHandler:
    """Runs completions and chat completions on an `AsyncEngine`."""

    def __init__(self, engine: Any, model_name: str, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.model_name = model_name
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        # In-flight requests, with the error to raise if the server aborts them (shutdown).
        self._active: dict[str, DeploylabError | None] = {}

    def abort_all(self, cause: DeploylabError) -> None:
        """Abort every in-flight request; each fails with `cause`."""
        for rid in list(self._active):
            self._active[rid] = cause
            self.engine.abort(rid)

    def prepare(self, req: CompletionRequest | ChatCompletionRequest, chat: bool) -> Prepared:
        """Tokenize the prompt and build SamplingParams (raises InvalidRequestError)."""
        if isinstance(req, ChatCompletionRequest):
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            top = (req.top_logprobs or 0) if req.logprobs else None
            echo = ""
        else:
            if isinstance(req.prompt, str):
                ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
            else:
                ids = list(req.prompt)  # type: ignore[arg-type]
            top = req.logprobs
            echo = req.prompt if (req.echo and isinstance(req.prompt, str)) else ""
        params = SamplingParams(
            max_tokens=req.max_tokens if req.max_tokens is not None else (None if chat else 16),
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k is None else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            seed=req.seed,
            stop=req.stop_list(),
            stop_token_ids=req.stop_token_ids or [],
            min_tokens=req.min_tokens or 0,
            ignore_eos=bool(req.ignore_eos),
            logprobs=top,
        )
        self._check_context(len(ids), params, req, chat)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        rid = new_id("chatcmpl" if chat else "cmpl")
        return Prepared(rid, chat, ids, params, include_usage, top, echo)

    def _check_context(self, n_prompt: int, params: SamplingParams, req: Any, chat: bool) -> None:
        """Prompt plus max_tokens (and min_tokens) must fit the context, as vLLM and OpenAI ask."""
        limit = self.engine.max_model_len
        where = "messages" if chat else "prompt"
        if n_prompt >= limit:
            raise PromptTooLongError(
                f"The {where} has {n_prompt} tokens; this model's context is {limit} tokens, "
                f"which must also hold at least one generated token. Shorten the {where}.",
                param=where,
            )
        for name, value in (("max_tokens", params.max_tokens), ("min_tokens", params.min_tokens)):
            if value is not None and n_prompt + value > limit:
                if name == "max_tokens" and getattr(req, "max_completion_tokens", None):
                    name = "max_completion_tokens"
                raise InvalidRequestError(
                    f"This model's maximum context length is {limit} tokens. However, you "
                    f"requested {n_prompt + value} tokens ({n_prompt} in the {where}, {value} "
                    f"{'in the completion' if name != 'min_tokens' else 'as min_tokens'}). "
                    f"Reduce the length of the {where} or {name} (at most {limit - n_prompt}).",
                    param=name,
                )

    async def _run(self, p: Prepared) -> AsyncGenerator[Any, None]:
        """Engine deltas of one request, with latency bookkeeping and abort on cancel."""
        timing = _Timing()
        n_out = 0
        finish = "abort"
        stream = self.engine.add_request(p.request_id, p.prompt_ids, p.params)
        self._active[p.request_id] = None
        try:
            async for delta in stream:
                cause = self._active.get(p.request_id)
                if delta.finish_reason == "abort" and cause is not None:
                    raise cause
                n_out += len(delta.new_token_ids)
                timing.tokens(len(delta.new_token_ids))
                if delta.finish_reason is not None:
                    finish = delta.finish_reason
                yield delta
        finally:
            self._active.pop(p.request_id, None)
            if finish == "abort":
                self.engine.abort(p.request_id)
            else:
                first = None if timing.first is None else timing.first - timing.start
                e2e = time.perf_counter() - timing.start
                self.metrics.observe_finished(first, timing.gaps, e2e, finish, n_out)

    async def complete(self, p: Prepared) -> dict[str, Any]:
        """A whole (non-streaming) response body."""
        text: list[str] = []
        logprobs: list[Any] = []
        n_out = 0
        finish = "stop"
        async for delta in self._run(p):
            text.append(delta.new_text)
            n_out += len(delta.new_token_ids)
            logprobs.extend(delta.logprobs or [])
            if delta.finish_reason is not None:
                finish = delta.finish_reason
        choice = self._choice(p, p.echo_text + "".join(text), logprobs, finish, full=True)
        return {
            "id": p.request_id,
            "object": "chat.completion" if p.chat else "text_completion",
            "created": now(),
            "model": self.model_name,
            "choices": [choice],
            "usage": _usage(len(p.prompt_ids), n_out),
        }

    async def stream(self, p: Prepared) -> AsyncIterator[str]:
        """SSE `data:` lines, ending in `data: [DONE]`."""
        created = now()
        obj = "chat.completion.chunk" if p.chat else "text_completion"
        n_out = 0

        def frame(choices: list[Any], usage: dict[str, int] | None = None) -> str:
            body: dict[str, Any] = {
                "id": p.request_id,
                "object": obj,
                "created": created,
                "model": self.model_name,
                "choices": choices,
            }
            if p.include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        runner = self._run(p)
        # Start the engine request before the first byte, so its errors become an HTTP status.
        first_delta = await anext(runner, None)
        try:
            if p.chat:
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                yield frame([role | {"logprobs": None, "finish_reason": None}])
            if first_delta is not None:
                async for delta in _chain(first_delta, runner):
                    n_out += len(delta.new_token_ids)
                    if not delta.new_text and not delta.finish_reason and not delta.logprobs:
                        continue
                    yield frame(
                        [self._choice(p, delta.new_text, delta.logprobs or [], delta.finish_reason)]
                    )
            if p.include_usage:
                yield frame([], _usage(len(p.prompt_ids), n_out))
        except DeploylabError as exc:  # after the 200: an error event, then [DONE]
            yield f"data: {json.dumps(api_error(exc).body())}\n\n"
        finally:
            await runner.aclose()
        yield "data: [DONE]\n\n"

    def _choice(
        self, p: Prepared, text: str, logprobs: list[Any], finish: str | None, full: bool = False
    ) -> dict[str, Any]:
        lp = self._logprobs(p, logprobs) if p.top_logprobs is not None else None
        if p.chat:
            key = "message" if full else "delta"
            body = {"role": "assistant", "content": text} if full else {"content": text}
            return {"index": 0, key: body, "logprobs": lp, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}

    def _logprobs(self, p: Prepared, entries: list[Any]) -> dict[str, Any]:
        """OpenAI logprobs: chat uses `content: [...]`, completions the legacy 4-list form."""
        decode = self.tokenizer.decode
        if p.chat:
            content = []
            for e in entries:
                tops = [
                    {"token": decode([t]), "logprob": lp, "bytes": list(decode([t]).encode())}
                    for t, lp in e.top
                ]
                tok = decode([e.token_id])
                content.append(
                    {
                        "token": tok,
                        "logprob": e.logprob,
                        "bytes": list(tok.encode()),
                        "top_logprobs": tops,
                    }  # fmt: skip
                )
            return {"content": content}
        return {
            "tokens": [decode([e.token_id]) for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{decode([t]): lp for t, lp in e.top} for e in entries],
            "text_offset": [],
        }


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
