"""The process group of a tensor-parallel engine: gloo on the CPU, NCCL on CUDA."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from deploylab.errors import ConfigError

# Seconds a collective may wait for a peer before it fails (a hung rank, not a dead one: a
# dead rank's closed connection fails gloo's collectives at once). Override with the env var.
TIMEOUT_ENV = "DEPLOYLAB_TP_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 120.0


def collective_timeout() -> timedelta:
    """The collectives' timeout (`DEPLOYLAB_TP_TIMEOUT_S`, default 120 s)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of seconds, got '{raw}'.") from None
    return timedelta(seconds=seconds)


def free_port() -> int:
    """A free TCP port on loopback for the process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_group(rank: int, world: int, port: int, device: torch.device) -> None:
    """Join the default process group (NCCL for CUDA devices, else gloo)."""
    if dist.is_initialized():
        raise ConfigError(
            "A torch.distributed process group already exists in this process: run one "
            "tensor-parallel engine per process."
        )
    if device.type == "cuda":
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast (see docs)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=collective_timeout(),
        device_id=device if device.type == "cuda" else None,
    )


def destroy_group() -> None:
    """Leave the process group (no-op when none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class TorchCommunicator:
    """`Communicator` over the default torch.distributed group."""

    def __init__(self, world: int) -> None:
        self.world = world

    def all_reduce(self, t: torch.Tensor) -> None:
        """Sum `t` over the ranks, in place."""
        dist.all_reduce(t)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """`[world, *t.shape]`: every rank's `t` in rank order."""
        out = torch.empty((self.world * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        _gather_single(out, t)  # concatenated along dim 0 (the form gloo and NCCL both take)
        return out.view(self.world, *t.shape)


# `all_gather_single` replaced `all_gather_into_tensor` in PyTorch 2.13; older ones (the GPU
# machines' 2.11) have only the latter.
_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
