"""Where a level-1 wake's weight copy loses bandwidth: one pinned host buffer of the weights'
size copied to the device in the ways a wake could do it, each timed on the device clock.

- destinations: a plain `torch.empty` buffer and a `VirtualArena` (driver VMM memory, what
  sleep mode maps at fixed addresses), fresh and after a release/restore cycle;
- host buffer: fresh, or one that slept (its pages untouched since the copy out);
- one copy, or chunks on 1, 2 or 4 streams.

    PYTHONPATH=src python benchmarks/wake_copy_probe.py --gb 2.47 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deploylab.engine.vmm import VirtualArena


def timed(fn: Callable[[], None], repeats: int = 3) -> list[float]:
    """Device seconds of each of `repeats` calls of `fn` (events on the current stream; fn
    joins its streams); the first call is the one a wake makes."""
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    return out


def chunked(dst: torch.Tensor, src: torch.Tensor, chunks: int, streams: list[Any]) -> None:
    """`dst.copy_(src)` in `chunks` pieces spread over `streams`; the current stream waits."""
    main = torch.cuda.current_stream()
    size = -(-src.numel() // chunks)
    for s in streams:
        s.wait_stream(main)
    for i in range(chunks):
        s = streams[i % len(streams)]
        with torch.cuda.stream(s):
            dst[i * size : (i + 1) * size].copy_(src[i * size : (i + 1) * size], non_blocking=True)
    for s in streams:
        main.wait_stream(s)


def hugepage_host(n: int) -> torch.Tensor | None:
    """`n` bytes of anonymous memory on transparent huge pages, registered with CUDA (pinned
    without 4 KiB pages: fewer IOMMU translations for the copy engine); None if it fails."""
    import mmap

    from deploylab.engine.vmm import tensor_at

    size = -(-n // (2 << 20)) * (2 << 20)
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    t = tensor_at(ctypes_address(region), size, torch.device("cpu"), region)[:n]
    t.fill_(1)
    err = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), size, 0)
    if int(err) != 0:
        print(f"cudaHostRegister failed: {err}")
        return None
    return t


def ctypes_address(region: Any) -> int:
    """The address of an mmap's first byte."""
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(region))


def both_ways(
    host: torch.Tensor, dev: torch.Tensor, streams: list[Any], rows: list[dict[str, Any]]
) -> None:
    """Up to 1 GiB host-to-device and as much device-to-host at once on two streams, against
    each alone: does the link run both directions together (the KV tiers' copies)?"""
    gib = min(1 << 30, host.numel() // 2)
    back = torch.empty(gib, dtype=torch.uint8, pin_memory=True)
    a, b = streams[0], streams[1]

    def h2d() -> None:
        dev[:gib].copy_(host[:gib], non_blocking=True)

    def d2h() -> None:
        back.copy_(dev[gib : 2 * gib], non_blocking=True)

    def together() -> None:
        main = torch.cuda.current_stream()
        for s, fn in ((a, h2d), (b, d2h)):
            s.wait_stream(main)
            with torch.cuda.stream(s):
                fn()
        main.wait_stream(a)
        main.wait_stream(b)

    out = {name: min(timed(fn)) for name, fn in (("h2d", h2d), ("d2h", d2h), ("both", together))}
    rows.append({"case": "both directions", **out})
    print(
        f"{gib / 2**30:.2f} GiB each way: H2D alone {out['h2d'] * 1e3:.1f} ms, "
        f"D2H alone {out['d2h'] * 1e3:.1f} ms, both at once {out['both'] * 1e3:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=2.47)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    n = int(args.gb * 1e9)
    dev = torch.device("cuda")
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    host.fill_(1)
    plain = torch.empty(n, dtype=torch.uint8, device=dev)
    arena = VirtualArena(n, dev)
    streams = [torch.cuda.Stream() for _ in range(4)]
    rows: list[dict[str, Any]] = []

    def case(name: str, fn: Callable[[], None]) -> None:
        secs = timed(fn)
        first, rest = n / secs[0] / 1e9, n / min(secs[1:]) / 1e9
        rows.append({"case": name, "seconds": secs, "first_gb_s": first, "repeat_gb_s": rest})
        print(f"{name:52s} first {first:6.1f} GB/s, repeated {rest:6.1f} GB/s", flush=True)

    case("one copy -> torch.empty", lambda: plain.copy_(host, non_blocking=True))
    gib = 1 << 30
    small = torch.empty(gib, dtype=torch.uint8, pin_memory=True)
    small.fill_(1)
    secs = timed(lambda: plain[:gib].copy_(small, non_blocking=True))
    first, rest = gib / secs[0] / 1e9, gib / min(secs[1:]) / 1e9
    print(f"1 GiB -> torch.empty: first {first:6.1f} GB/s, repeated {rest:6.1f} GB/s")
    rows.append({"case": "one copy of 1 GiB -> torch.empty", "seconds": secs})
    case("one copy -> VMM arena", lambda: arena.tensor.copy_(host, non_blocking=True))
    arena.release()
    arena.restore()
    case("one copy -> VMM arena (after release/restore)", lambda: arena.tensor.copy_(host, True))
    for chunks, k in ((8, 1), (8, 2), (16, 4)):
        case(
            f"{chunks} chunks, {k} streams -> VMM arena",
            lambda c=chunks, k=k: chunked(arena.tensor, host, c, streams[:k]),  # type: ignore[misc]
        )
    huge = hugepage_host(n)
    if huge is not None:
        case("one copy from huge pages (cudaHostRegister)", lambda: arena.tensor.copy_(huge, True))
    slept = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    slept.copy_(arena.tensor, non_blocking=True)  # as a sleep fills it
    torch.cuda.synchronize()
    case("one copy from a slept buffer -> VMM arena", lambda: arena.tensor.copy_(slept, True))
    both_ways(host, plain, streams, rows)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
