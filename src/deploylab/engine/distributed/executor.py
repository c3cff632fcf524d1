"""Rank 0's side of tensor parallelism: start the workers, share the process group, send
each step's batch before running it, and fail fast when a rank dies."""

from __future__ import annotations

import logging
import os
import time
import weakref
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import torch
import torch.multiprocessing as mp

from deploylab.engine.async_engine import EngineDeadError
from deploylab.engine.config import EngineConfig
from deploylab.engine.distributed.group import (
    TorchCommunicator,
    collective_timeout,
    destroy_group,
    free_port,
    init_group,
)
from deploylab.engine.distributed.loading import check_config, load_shard
from deploylab.engine.distributed.step import encode_step
from deploylab.engine.distributed.worker import rank_device, worker_main
from deploylab.engine.model_runner import ModelRunner
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.scheduler import SchedulerOutput
from deploylab.engine.sequence import Sequence
from deploylab.errors import ConfigError

logger = logging.getLogger(__name__)


class TensorParallelError(EngineDeadError):
    """A tensor-parallel rank died or failed: the engine cannot go on (restart it); the
    server answers 503 with this message."""

    fatal = True  # AsyncEngine stops at once instead of retrying the step


class TensorParallel:
    """The worker processes (ranks 1..N-1) and rank 0's membership of the group."""

    def __init__(self, config: EngineConfig) -> None:
        world = config.tensor_parallel_size
        if config.speculative_config is not None:
            raise ConfigError(
                "Speculative decoding does not run under tensor parallelism yet: drop "
                "speculative_config or use tensor_parallel_size=1."
            )
        if getattr(config, "enable_lora", False) or getattr(config, "lora_modules", None):
            raise ConfigError(
                "Multi-LoRA does not run under tensor parallelism yet (adapter deltas would "
                "need the same column/row split): serve adapters with tensor_parallel_size=1."
            )
        if config.kv_offload_gib > 0:
            raise ConfigError(
                "KV cache tiers do not run under tensor parallelism yet (each rank holds its "
                "own KV heads): drop kv_offload_gib or use tensor_parallel_size=1."
            )
        device = config.torch_device()
        if device.type == "cuda" and torch.cuda.device_count() < world:
            raise ConfigError(
                f"tensor_parallel_size={world} needs {world} GPUs; this machine has "
                f"{torch.cuda.device_count()}."
            )
        check_config(config)
        self.world = world
        self.config = config
        self.device = rank_device(config, 0)
        threads = config.num_threads or max(1, torch.get_num_threads() // world)
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        port = free_port()
        ctx = mp.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.conns: list[Connection] = []
        for rank in range(1, world):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(rank, world, config, port, theirs, threads),
                name=f"deploylab-tp{rank}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            self.procs.append(proc)
            self.conns.append(mine)
        self._finalizer = weakref.finalize(self, _terminate, list(self.procs))
        self.broken: str | None = None
        self._expect("hello")
        init_group(0, world, port, self.device)

    def load_model(self) -> tuple[LlamaForCausalLM, Any | None]:
        """Rank 0's shard of the model and the tokenizer."""
        return load_shard(self.config, 0, self.world, self.device, TorchCommunicator(self.world))

    def attach(self, runner: ModelRunner, num_blocks: int, max_model_len: int) -> TPModelRunner:
        """Have every worker build its KV cache and runner; rank 0's runner, wrapped."""
        for conn in self.conns:
            conn.send(("init", num_blocks, max_model_len))
        self._expect("ready")
        return TPModelRunner(runner, self)

    def send_step(self, out: SchedulerOutput) -> None:
        """Send the step's batch to every worker (after checking they all live)."""
        self.check()
        msg = ("step", encode_step(out))
        try:
            for conn in self.conns:
                conn.send(msg)
        except OSError as exc:
            raise self.fail(f"a worker's pipe broke ({exc})") from exc

    def check(self) -> None:
        """Raise TensorParallelError if the group is broken or a worker has exited."""
        if self.broken is not None:
            raise TensorParallelError(self.broken)
        for rank, proc in enumerate(self.procs, start=1):
            if not proc.is_alive():
                raise self.fail(self._exit_text(rank, proc))

    def fail(self, why: str) -> TensorParallelError:
        """Mark the group broken; the error every later step raises."""
        if self.broken is None:
            self.broken = (
                f"Tensor parallelism failed: {why}. The engine has stopped; restart it "
                "(see the worker's log above)."
            )
            logger.error("%s", self.broken)
        return TensorParallelError(self.broken)

    def _exit_text(self, rank: int, proc: BaseProcess) -> str:
        code = proc.exitcode
        reason = self._error_of(rank)
        text = f"rank {rank} (pid {proc.pid}) exited with code {code}"
        return f"{text}: {reason}" if reason else text

    def _error_of(self, rank: int) -> str | None:
        conn = self.conns[rank - 1]
        try:
            while conn.poll(0):
                msg = conn.recv()
                if msg[0] == "error":
                    return str(msg[1]).splitlines()[0]
        except (OSError, EOFError):
            pass
        return None

    def send_all(self, msg: tuple[Any, ...]) -> None:
        """Send a control message to every worker."""
        try:
            for conn in self.conns:
                conn.send(msg)
        except OSError as exc:
            raise self.fail(f"a worker's pipe broke ({exc})") from exc

    def _expect(self, kind: str) -> list[tuple[Any, ...]]:
        """Wait for `kind` from every worker, failing fast on one that exits or errs; the
        messages, rank 1 first."""
        deadline = time.monotonic() + max(600.0, collective_timeout().total_seconds())
        got: list[tuple[Any, ...]] = []
        for rank, (proc, conn) in enumerate(zip(self.procs, self.conns, strict=True), start=1):
            while not conn.poll(0.2):
                if not proc.is_alive() or time.monotonic() > deadline:
                    self.close()
                    raise self.fail(self._exit_text(rank, proc) + f" before '{kind}'")
            msg = conn.recv()
            if msg[0] != kind:
                self.close()
                detail = str(msg[1]).splitlines()[0] if msg[0] == "error" else repr(msg)
                raise self.fail(f"rank {rank} failed while starting: {detail}")
            got.append(msg)
        return got

    def close(self) -> None:
        """Stop the workers and leave the group."""
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        for proc in self.procs:
            proc.join(timeout=5)
        self._finalizer()
        destroy_group()


def _terminate(procs: list[BaseProcess]) -> None:
    """Stop the workers and leave the group (also when an engine failed half-built)."""
    destroy_group()
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, 9)


class TPModelRunner:
    """Rank 0's model runner under tensor parallelism: sends each step to the workers, then
    runs its own shard; any failure of a collective becomes a TensorParallelError."""

    def __init__(self, runner: ModelRunner, tp: TensorParallel) -> None:
        self.inner = runner
        self.tp = tp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def enable_cuda_graphs(self, max_batch: int, max_model_len: int) -> bool:
        """Every rank captures the same decode graphs at once (same buckets in the same
        order, each rank's all-reduces captured inside them); they are kept only where every
        rank captured, so that all ranks replay a step's graph or all run it eagerly (each
        rank decides per step from the same batch)."""
        self.tp.send_all(("graphs", max_batch, max_model_len))
        ok = self.inner.enable_cuda_graphs(max_batch, max_model_len)
        oks = [bool(msg[1]) for msg in self.tp._expect("graphs")]
        use = ok and all(oks)
        self.tp.send_all(("use_graphs", use))
        if not use:
            self.inner.graphs = None
            logger.warning(
                "CUDA graphs are off under tensor parallelism: rank(s) %s did not capture "
                "(no paged decode kernel for this dtype, or the capture failed)",
                [r for r, good in enumerate([ok, *oks]) if not good],
            )
        return use

    def execute(self, out: SchedulerOutput) -> tuple[list[Sequence], torch.Tensor | None]:
        """Send the step, run rank 0's shard; the sampling rows and their full logits."""
        self.tp.send_step(out)
        try:
            return self.inner.execute(out)
        except RuntimeError as exc:  # a collective failed: a peer died or timed out
            time.sleep(0.2)  # let a dying worker's exit code land
            dead = [
                self.tp._exit_text(r, p)
                for r, p in enumerate(self.tp.procs, start=1)
                if not p.is_alive()
            ]
            why = "; ".join(dead) if dead else f"a collective failed ({exc})"
            raise self.tp.fail(why) from exc
