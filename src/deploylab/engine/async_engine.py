"""`AsyncEngine`: the engine for asyncio servers, with its step loop in one background thread.

Callers (any number of asyncio tasks) call `add_request`, which validates and tokenizes on the
caller's thread (so bad input raises at once) and returns a `RequestStream` of deltas. The
engine thread applies queued adds/aborts between steps, runs `LLMEngine.step()`, and hands
each event loop its deltas in one `call_soon_threadsafe` per step.

A request that fails inside a step gets `RequestFailedError` and the loop goes on; a step that
fails as a whole ends the requests of that step. Only `MAX_STEP_FAILURES` failed steps in a row
(a broken model or device, not a bad request) end the loop: then every caller gets
`EngineDeadError` and `is_running` is False.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any

from deploylab.engine.config import EngineConfig
from deploylab.engine.llm_engine import LLMEngine, Prompt
from deploylab.engine.outputs import EngineStats, RequestDelta
from deploylab.engine.sampling_params import SamplingParams
from deploylab.engine.sequence import Sequence
from deploylab.errors import DeploylabError, EngineOverloadedError, InvalidRequestError

logger = logging.getLogger(__name__)

MAX_STEP_FAILURES = 3  # consecutive failed steps after which the engine is declared dead


class EngineDeadError(DeploylabError):
    """The engine's step loop failed or was shut down; the server must be restarted."""


class RequestFailedError(DeploylabError):
    """The engine failed while running this request (a server fault, not a bad request)."""


class RequestStream:
    """Async iterator over one request's `RequestDelta`s; ends after the finished one."""

    def __init__(self, request_id: str, engine: AsyncEngine) -> None:
        self.request_id = request_id
        self._engine = engine
        self._queue: asyncio.Queue[RequestDelta | BaseException] = asyncio.Queue()
        self.finished = False

    def _put(self, item: RequestDelta | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestDelta:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.request_finished:
            self.finished = True
        return item

    def abort(self) -> None:
        """Abort the request (the stream then yields a final delta with reason "abort")."""
        if not self.finished:
            self._engine.abort(self.request_id)


class AsyncEngine:
    """Thread-backed engine for asyncio callers. Keyword arguments are `EngineConfig` fields."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        engine: LLMEngine | None = None,
        **overrides: Any,
    ) -> None:
        self.engine = engine or LLMEngine(config, **overrides)
        self._commands: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pending_adds = 0
        self._streams: dict[str, RequestStream] = {}
        self._loops: dict[str, asyncio.AbstractEventLoop] = {}
        self._stats = self.engine.stats()
        self._stopping = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="deploylab-engine", daemon=True)
        self._thread.start()

    # ---- read-only views ---------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None for random weights)."""
        return self.engine.tokenizer

    @property
    def config(self) -> EngineConfig:
        """The engine's settings."""
        return self.engine.config

    @property
    def max_model_len(self) -> int:
        """Context length in tokens (prompt plus output)."""
        return self.engine.max_model_len

    @property
    def is_running(self) -> bool:
        """True while the step loop is alive."""
        return self._thread.is_alive() and self._error is None and not self._stopping

    @property
    def dead_reason(self) -> str | None:
        """Why the engine no longer runs (None while it does)."""
        if self._error is not None:
            return f"The engine loop failed: {self._error!r}"
        if self._stopping or not self._thread.is_alive():
            return "The engine has been shut down."
        return None

    def check_admission(self) -> None:
        """Raise EngineDeadError or EngineOverloadedError now, before any work on a request."""
        self._check_alive()
        waiting = self.engine.scheduler.num_waiting + self._pending_adds
        if waiting >= self.engine.config.max_waiting:
            raise EngineOverloadedError(
                f"The engine has {waiting} requests waiting (max_waiting="
                f"{self.engine.config.max_waiting}); retry later."
            )

    def stats(self) -> EngineStats:
        """The latest snapshot (updated after every step), waiting count included."""
        snap = self._stats
        return replace(snap, num_waiting=snap.num_waiting + self._pending_adds)

    # ---- requests ----------------------------------------------------------------------
    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams | None = None,
        lora_name: str | None = None,
    ) -> RequestStream:
        """Queue a request; call from inside a running event loop.

        Raises InvalidRequestError/PromptTooLongError for bad input, EngineOverloadedError
        when `max_waiting` requests already wait, EngineDeadError when the loop has died.
        """
        loop = asyncio.get_running_loop()
        if request_id in self._streams:
            raise InvalidRequestError(
                f"Request id '{request_id}' is already in use.", param="request_id"
            )
        self.check_admission()
        seq = self.engine.make_sequence(request_id, prompt, params, lora_name)
        stream = RequestStream(request_id, self)
        self._streams[request_id] = stream
        with self._lock:
            self._pending_adds += 1
        self._commands.append(("add", seq, loop))
        self._wake.set()
        return stream

    # ---- LoRA adapters (engine/lora; the registry is thread-safe) -----------------------
    def list_loras(self) -> list[str]:
        """Names of the loaded LoRA adapters."""
        return self.engine.list_loras()

    def lora_path(self, name: str) -> str:
        """The directory adapter `name` was loaded from."""
        assert self.engine.lora is not None
        return self.engine.lora.path(name)

    def add_lora(self, name: str, path: str) -> None:
        """Load a LoRA adapter (blocking: reads its files; call off the event loop)."""
        self.engine.add_lora(name, path)

    def remove_lora(self, name: str) -> None:
        """Unload a LoRA adapter; requests already using it finish with it."""
        self.engine.remove_lora(name)

    def abort(self, request_id: str) -> None:
        """Abort a request; its blocks are freed before the next step."""
        self._commands.append(("abort", request_id))
        self._wake.set()

    def call(self, fn: Callable[[LLMEngine], Any]) -> Future[Any]:
        """Run `fn(engine)` on the engine thread between steps (sleep/wake, maintenance);
        the future holds its result or exception."""
        self._check_alive()
        future: Future[Any] = Future()
        self._commands.append(("call", fn, future))
        self._wake.set()
        return future

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        lora_name: str | None = None,
    ) -> AsyncIterator[RequestDelta]:
        """Convenience wrapper: yields deltas; aborts the request if the caller stops early."""
        import uuid

        stream = self.add_request(request_id or uuid.uuid4().hex, prompt, params, lora_name)
        try:
            async for delta in stream:
                yield delta
        finally:
            stream.abort()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the step loop; pending streams get EngineDeadError."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _check_alive(self) -> None:
        reason = self.dead_reason
        if reason is not None:
            raise EngineDeadError(reason) from self._error

    # ---- engine thread -----------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        failed_steps = 0
        try:
            while not self._stopping:
                if not self._commands and not engine.has_unfinished_requests():
                    self._stats = engine.stats()
                    self._wake.wait()
                    self._wake.clear()
                    continue
                deltas = self._apply_commands()
                if engine.has_unfinished_requests():
                    try:
                        deltas += engine.step()
                        failed_steps = 0
                    except Exception as exc:  # noqa: BLE001 - end the step's requests, go on
                        failed_steps += 1
                        logger.exception("engine step failed (%d in a row)", failed_steps)
                        if failed_steps >= MAX_STEP_FAILURES or getattr(exc, "fatal", False):
                            raise
                        deltas += engine.fail_step(exc)
                self._stats = engine.stats()
                self._deliver(deltas)
        except BaseException as exc:  # noqa: BLE001 - hand any failure to every caller
            logger.exception("engine loop failed")
            self._error = exc
        self._fail_all(self._error or EngineDeadError("The engine has been shut down."))

    def _apply_commands(self) -> list[RequestDelta]:
        deltas: list[RequestDelta] = []
        while self._commands:
            cmd = self._commands.popleft()
            if cmd[0] == "add":
                seq: Sequence = cmd[1]
                with self._lock:
                    self._pending_adds -= 1
                loop = cmd[2]
                try:
                    self.engine.add_sequence(seq)
                except Exception as exc:  # noqa: BLE001 - this request's fault only
                    self._send(loop, [(seq.request_id, _request_error(seq.request_id, exc))])
                    continue
                self._loops[seq.request_id] = loop
            elif cmd[0] == "call":
                _run_call(self.engine, cmd[1], cmd[2])
            else:
                deltas += self.engine.abort(cmd[1])
        return deltas

    def _deliver(self, deltas: list[RequestDelta]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[str, Any]]] = {}
        for delta in deltas:
            rid = delta.request_id
            loop = self._loops.get(rid)
            item: RequestDelta | BaseException = delta
            if delta.finish_reason == "error":
                # One sample failed: the request fails as a whole (its other samples stop).
                item = _request_error(rid, self.engine.failures.pop(rid, None))
                if not delta.request_finished:
                    self.abort(rid)
                self._loops.pop(rid, None)
            elif delta.request_finished:
                self._loops.pop(rid, None)
            if loop is not None:
                by_loop.setdefault(loop, []).append((rid, item))
        for loop, batch in by_loop.items():
            if not self._send(loop, batch):
                for rid, item in batch:  # the caller's loop is closed: nobody listens any more
                    if isinstance(item, RequestDelta) and not item.request_finished:
                        self.abort(rid)

    def _send(
        self,
        loop: asyncio.AbstractEventLoop,
        items: list[tuple[str, RequestDelta | BaseException]],
    ) -> bool:
        try:
            loop.call_soon_threadsafe(self._dispatch, items)
            return True
        except RuntimeError:
            return False

    def _dispatch(self, items: list[tuple[str, RequestDelta | BaseException]]) -> None:
        """Runs on the caller's event loop."""
        for request_id, item in items:
            stream = self._streams.get(request_id)
            if stream is None:
                continue
            if isinstance(item, BaseException) or item.request_finished:
                del self._streams[request_id]
            stream._put(item)

    def _fail_all(self, exc: BaseException) -> None:
        error = exc if isinstance(exc, DeploylabError) else EngineDeadError(repr(exc))
        loops = set(self._loops.values())
        loops.update(cmd[2] for cmd in list(self._commands) if cmd[0] == "add")
        for cmd in list(self._commands):
            if cmd[0] == "call" and not cmd[2].done():
                cmd[2].set_exception(error)
        for loop in loops:
            try:
                loop.call_soon_threadsafe(self._fail_streams, error)
            except RuntimeError:
                pass

    def _fail_streams(self, error: BaseException) -> None:
        for stream in list(self._streams.values()):
            stream._put(error)
        self._streams.clear()


def _run_call(engine: LLMEngine, fn: Callable[[LLMEngine], Any], future: Future[Any]) -> None:
    try:
        future.set_result(fn(engine))
    except Exception as exc:  # noqa: BLE001 - the caller gets it
        future.set_exception(exc)


def _request_error(request_id: str, exc: BaseException | None) -> BaseException:
    """What a caller gets for a request that failed in the engine: its own error when it was
    the caller's (a DeploylabError), else RequestFailedError (the server's fault)."""
    if isinstance(exc, DeploylabError):
        return exc
    return RequestFailedError(
        f"The engine failed while running request '{request_id}': {exc!r}. Other requests "
        "are not affected; retry, and report the error if it repeats."
    )
