"""`DiskStore`: the disk tier, one safetensors file per KV block under a size cap, LRU.

Each file holds the block (`[layers, 2, kv_heads, block_size, head_dim]`), its token ids and
a header naming the cache identity (model, shape, block size, dtype, layout version) and a
CRC32 of the data. A file whose header, tokens or checksum disagree is never used: the read
returns None (the block is recomputed), the file is deleted and the first error of each kind
is logged. A failed write (a full disk, say) drops that block the same way.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

SUFFIX = ".kvblock"


def _name(h: int) -> str:
    return f"{h & 0xFFFFFFFFFFFFFFFF:016x}{SUFFIX}"


class DiskStore:
    """Blocks on disk in `root/<identity digest>/`, at most `capacity_bytes` of them."""

    def __init__(self, root: Path, identity: str, capacity_bytes: int) -> None:
        self.identity = identity
        self.capacity_bytes = capacity_bytes
        digest = f"{zlib.crc32(identity.encode()):08x}"
        self.dir = Path(root) / digest
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: OrderedDict[str, int] = OrderedDict()  # file name -> bytes, LRU order
        found = sorted(self.dir.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime)
        for path in found:  # files of an earlier run count against the cap, oldest first
            self.files[path.name] = path.stat().st_size
        self.used_bytes = sum(self.files.values())
        self.errors = 0
        self._logged: set[str] = set()

    def _error(self, kind: str, message: str) -> None:
        self.errors += 1
        if kind not in self._logged:
            self._logged.add(kind)
            logger.warning(
                "KV disk tier: %s (further %s errors are counted, not logged)", message, kind
            )

    def _drop(self, name: str) -> None:
        self.used_bytes -= self.files.pop(name, 0)
        try:
            (self.dir / name).unlink()
        except OSError:
            pass

    def contains(self, h: int) -> bool:
        """True when a file for hash `h` exists (its contents are checked on `read`)."""
        return _name(h) in self.files

    def read(self, h: int, tokens: tuple[int, ...]) -> torch.Tensor | None:
        """The block stored for `h`, if its header, tokens and checksum match; else None."""
        name = _name(h)
        if name not in self.files:
            return None
        try:
            with safe_open(str(self.dir / name), framework="pt") as f:
                meta = f.metadata() or {}
                data = f.get_tensor("kv")
                stored = f.get_tensor("tokens")
        except Exception as exc:  # noqa: BLE001 - a damaged file of any kind: recompute
            self._error("corrupt", f"unreadable block file {name} ({exc!r}); recomputing")
            self._drop(name)
            return None
        if meta.get("identity") != self.identity:
            self._error("identity", f"block file {name} is of another model or layout")
            self._drop(name)
            return None
        if tuple(stored.tolist()) != tokens or meta.get("crc32") != str(_crc(data)):
            self._error("corrupt", f"block file {name} failed its token or checksum test")
            self._drop(name)
            return None
        self.files.move_to_end(name)
        return data

    def write(self, h: int, tokens: tuple[int, ...], data: torch.Tensor) -> bool:
        """Store one block (evicting the least recently used files past the cap)."""
        name = _name(h)
        size = data.numel() * data.element_size() + 8 * len(tokens) + 1024
        if size > self.capacity_bytes:
            return False
        while self.files and self.used_bytes + size > self.capacity_bytes:
            self._drop(next(iter(self.files)))
        path, tmp = self.dir / name, self.dir / (name + ".tmp")
        data = data.contiguous()
        meta = {"identity": self.identity, "crc32": str(_crc(data))}
        try:
            save_file(
                {"kv": data, "tokens": torch.tensor(tokens, dtype=torch.int64)},
                str(tmp),
                metadata=meta,
            )
            os.replace(tmp, path)
        except OSError as exc:
            self._error("write", f"cannot write {path} ({exc}); the block is not kept")
            tmp.unlink(missing_ok=True)
            return False
        self.used_bytes -= self.files.pop(name, 0)  # an older file for the same hash
        actual = path.stat().st_size
        self.files[name] = actual
        self.used_bytes += actual
        return True


def _crc(data: torch.Tensor) -> int:
    return zlib.crc32(data.contiguous().view(torch.uint8).numpy())  # type: ignore[arg-type]
