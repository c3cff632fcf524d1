"""Turn validated OpenAI requests into engine calls, and engine deltas into responses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from deploylab.engine.sampling_params import SamplingParams
from deploylab.errors import DeploylabError, InvalidRequestError, PromptTooLongError
from deploylab.server.choices import ChoiceState
from deploylab.server.constraints import Constraint, plan, render_messages
from deploylab.server.errors import api_error
from deploylab.server.metrics import ServerMetrics
from deploylab.server.protocol import ChatCompletionRequest, CompletionRequest, new_id, now


@dataclass
class Prepared:
    """A request ready for the engine: prompt ids, sampling params and response framing."""

    request_id: str
    chat: bool
    prompts: list[list[int]]  # one per prompt of a batch (completions); chat has one
    params: SamplingParams
    include_usage: bool
    top_logprobs: int | None  # None: no logprobs in the response
    echo: list[str] | None = None  # completions with `echo`: each prompt's text
    constraint: Constraint = field(default_factory=Constraint)
    lora_name: str | None = None  # the LoRA adapter the request's `model` picked
    model_name: str | None = None  # the `model` of the response (default: the served name)

    def engine_ids(self) -> list[str]:
        """The engine request id of each prompt."""
        if len(self.prompts) == 1:
            return [self.request_id]
        return [f"{self.request_id}-{i}" for i in range(len(self.prompts))]

    def choices(self) -> list[ChoiceState]:
        """Empty choice states, in choice-index order."""
        n = self.params.n
        out = []
        for i, ids in enumerate(self.prompts):
            for k in range(n):
                echo = self.echo[i] if self.echo is not None else None
                state = ChoiceState(i * n + k, self.chat, self.top_logprobs, self.constraint, echo)
                state.first_prompt_token = ids[0] if ids else None
                out.append(state)
        return out


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


MAX_PROMPTS = 1024  # prompts in one batched /v1/completions request


class GenerationHandler:
    """Runs completions and chat completions on an `AsyncEngine`."""

    def __init__(self, engine: Any, model_name: str, metrics: ServerMetrics) -> None:
        self.engine = engine
        self.model_name = model_name
        self.metrics = metrics
        self.tokenizer = engine.tokenizer
        # In-flight engine requests, with the error to raise if the server aborts them.
        self._active: dict[str, DeploylabError | None] = {}

    def abort_all(self, cause: DeploylabError) -> None:
        """Abort every in-flight request; each fails with `cause`."""
        for rid in list(self._active):
            self._active[rid] = cause
            self.engine.abort(rid)

    def prepare(self, req: CompletionRequest | ChatCompletionRequest, chat: bool) -> Prepared:
        """Tokenize the prompt(s) and build SamplingParams (raises InvalidRequestError)."""
        constraint = plan(req)
        echo: list[str] | None = None
        prompt_logprobs = None
        if isinstance(req, ChatCompletionRequest):
            messages = render_messages(req.messages, constraint)
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            prompts = [self.tokenizer.encode(text, add_special_tokens=False)]
            top = (req.top_logprobs or 0) if req.logprobs else None
        else:
            prompts = self._completion_prompts(req)
            top = req.logprobs
            if req.echo:
                echo = [
                    p if isinstance(p, str) else self.tokenizer.decode(p) for p in req.prompt_list()
                ]
                prompt_logprobs = top  # echo + logprobs: the prompt tokens' logprobs too
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
            n=req.n,
            prompt_logprobs=prompt_logprobs,
            structured_output=constraint.structured,
        )
        for ids in prompts:
            self._check_context(len(ids), params, req, chat)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        rid = new_id("chatcmpl" if chat else "cmpl")
        return Prepared(rid, chat, prompts, params, include_usage, top, echo, constraint)

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

    def _completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        prompts = req.prompt_list()
        if not prompts:
            raise InvalidRequestError(
                "prompt is an empty list; send a string, token ids, or a list of them.",
                param="prompt",
            )
        if len(prompts) > MAX_PROMPTS:
            raise InvalidRequestError(
                f"A batch holds at most {MAX_PROMPTS} prompts, got {len(prompts)}.",
                param="prompt",
            )
        out = []
        for p in prompts:
            if isinstance(p, str):
                out.append(self.tokenizer.encode(p, add_special_tokens=False))
            else:
                out.append(list(p))
        return out

    async def _run(self, p: Prepared) -> AsyncGenerator[tuple[int, Any], None]:
        """(prompt index, engine delta) of every prompt of the request, as they come, with
        latency bookkeeping; all of the request's engine requests are aborted on cancel."""
        rids = p.engine_ids()
        streams = []
        try:
            for rid, ids in zip(rids, p.prompts, strict=True):
                streams.append(self.engine.add_request(rid, ids, p.params, p.lora_name))
                self._active[rid] = None
        except BaseException:
            for rid in rids[: len(streams)]:
                self._active.pop(rid, None)
                self.engine.abort(rid)
            raise
        timings = [_Timing() for _ in rids]
        n_out = [0] * len(rids)
        done = [False] * len(rids)
        finish = ["abort"] * len(rids)
        try:
            async for i, delta in _merge(streams):
                cause = self._active.get(rids[i])
                if delta.finish_reason == "abort" and cause is not None:
                    raise cause  # the server aborted it (shutdown): fail with the reason
                n_out[i] += len(delta.new_token_ids)
                timings[i].tokens(len(delta.new_token_ids))
                if delta.finish_reason is not None:
                    finish[i] = delta.finish_reason
                done[i] = done[i] or delta.request_finished
                yield i, delta
        finally:
            for i, rid in enumerate(rids):
                self._active.pop(rid, None)
                if not done[i]:
                    self.engine.abort(rid)
                    continue
                t = timings[i]
                first = None if t.first is None else t.first - t.start
                e2e = time.perf_counter() - t.start
                self.metrics.observe_finished(first, t.gaps, e2e, finish[i], n_out[i])

    async def complete(self, p: Prepared) -> dict[str, Any]:
        """A whole (non-streaming) response body."""
        choices = p.choices()
        async for i, delta in self._run(p):
            choices[i * p.params.n + delta.index].add(delta)
        decode = self.tokenizer.decode
        return {
            "id": p.request_id,
            "object": "chat.completion" if p.chat else "text_completion",
            "created": now(),
            "model": p.model_name or self.model_name,
            "choices": [c.full(decode) for c in choices],
            "usage": _usage(sum(len(ids) for ids in p.prompts), sum(c.num_tokens for c in choices)),
        }

    async def stream(self, p: Prepared) -> AsyncIterator[str]:
        """SSE `data:` lines, ending in `data: [DONE]`."""
        created = now()
        obj = "chat.completion.chunk" if p.chat else "text_completion"
        choices = p.choices()
        decode = self.tokenizer.decode

        def frame(items: list[Any], usage: dict[str, int] | None = None) -> str:
            body: dict[str, Any] = {
                "id": p.request_id,
                "object": obj,
                "created": created,
                "model": p.model_name or self.model_name,
                "choices": items,
            }
            if p.include_usage:
                body["usage"] = usage
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        runner = self._run(p)
        # Start the engine requests before the first byte, so their errors become an HTTP status.
        first_delta = await anext(runner, None)
        try:
            if p.chat:
                for c in choices:
                    role = {"role": "assistant", "content": ""}
                    yield frame(
                        [{"index": c.index, "delta": role, "logprobs": None, "finish_reason": None}]
                    )
            if first_delta is not None:
                async for i, delta in _chain(first_delta, runner):
                    choice = choices[i * p.params.n + delta.index]
                    choice.add(delta)
                    item = choice.chunk(delta.new_text, decode)
                    if item is not None:
                        yield frame([item])
            if p.include_usage:
                prompt_tokens = sum(len(ids) for ids in p.prompts)
                yield frame([], _usage(prompt_tokens, sum(c.num_tokens for c in choices)))
        except DeploylabError as exc:  # after the 200: an error event, then [DONE]
            yield f"data: {json.dumps(api_error(exc).body())}\n\n"
        finally:
            await runner.aclose()
        yield "data: [DONE]\n\n"


async def _chain(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item


async def _merge(streams: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """Items of several async iterators as they arrive, tagged with the iterator's index."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    end = object()

    async def pump(i: int, stream: Any) -> None:
        try:
            async for item in stream:
                await queue.put((i, item))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((i, exc))
        await queue.put((i, end))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        live = len(streams)
        while live:
            i, item = await queue.get()
            if item is end:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
