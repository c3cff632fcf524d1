"""The worker process of ranks 1..N-1: load its shard, then run each step rank 0 sends."""

from __future__ import annotations

import logging
import os
import traceback
from multiprocessing.connection import Connection
from typing import Any

import torch

from deploylab.engine.config import EngineConfig
from deploylab.engine.distributed.group import TorchCommunicator, destroy_group, init_group
from deploylab.engine.distributed.step import decode_step

logger = logging.getLogger(__name__)
POLL_S = 1.0  # how often an idle worker checks that rank 0 still lives


def rank_device(config: EngineConfig, rank: int) -> torch.device:
    """The device of `rank`: `cuda:<rank>` on CUDA, else the CPU."""
    base = config.torch_device()
    return torch.device("cuda", rank) if base.type == "cuda" else base


def worker_main(
    rank: int, world: int, config: EngineConfig, port: int, conn: Connection, threads: int
) -> None:
    """Entry point of a spawned worker; reports `("error", text)` on the pipe if it fails."""
    parent = os.getppid()
    try:
        torch.set_num_threads(threads)
        device = rank_device(config, rank)
        conn.send(("hello", os.getpid()))
        init_group(rank, world, port, device)
        _serve(rank, world, config, device, conn, parent)
    except BaseException as exc:  # noqa: BLE001 - tell rank 0 why, then exit
        try:
            conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
        except OSError:
            pass
        raise SystemExit(1) from None
    finally:
        destroy_group()


def _serve(
    rank: int,
    world: int,
    config: EngineConfig,
    device: torch.device,
    conn: Connection,
    parent: int,
) -> None:
    from deploylab.engine.distributed.loading import load_shard
    from deploylab.engine.kv_cache import KVCache
    from deploylab.engine.model_runner import ModelRunner

    model, _ = load_shard(config, rank, world, device, TorchCommunicator(world))
    msg = _receive(conn, parent)
    if msg[0] != "init":
        return
    _, num_blocks, max_model_len = msg
    dtype = config.torch_dtype(device)
    cache = KVCache(model.config, num_blocks, config.block_size, dtype, device)
    runner = ModelRunner(model, cache, device, max_model_len, config.tree_attention)
    conn.send(("ready", rank))
    while True:
        msg = _receive(conn, parent)
        if msg[0] == "step":
            runner.execute(decode_step(msg[1]))
        elif msg[0] == "graphs":  # capture with rank 0 (the all-reduces run in lockstep)
            conn.send(("graphs", runner.enable_cuda_graphs(msg[1], msg[2])))
            use = _receive(conn, parent)  # ("use_graphs", whether every rank captured)
            if use[0] != "use_graphs":
                return
            if not use[1]:
                runner.graphs = None
        else:
            return


def _receive(conn: Connection, parent: int) -> tuple[Any, ...]:
    """The next message from rank 0; ("stop",) once rank 0's process is gone."""
    while not conn.poll(POLL_S):
        if os.getppid() != parent:
            return ("stop",)
    try:
        msg: tuple[Any, ...] = conn.recv()
    except EOFError:
        return ("stop",)
    return msg
