"""Variant 4 for datasets that list their files: the files of a few samples copied to RAM.

A dataset that keeps one file per sample in a list attribute (`paths`, `files`, torchvision's
`ImageFolder.samples` of `(path, class)` pairs, a list of shards) is copied with that list
pointing at RAM copies (`/dev/shm`) of a few of its files, cycled: the dataset's own code
still opens and decodes them, but nothing waits on the storage.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Files bigger than this in total are not copied to RAM (the variant is skipped instead).
MAX_CACHE_BYTES = 512 * 2**20
# Entries checked when looking for a file list (each check may touch slow storage).
_PROBED = 8


def _entry_path(entry: Any) -> Any:
    """The path part of a file-list entry: the entry, or the first part of a tuple/list."""
    if isinstance(entry, tuple | list) and entry:
        entry = entry[0]
    if isinstance(entry, str | os.PathLike) and not isinstance(entry, bytes):
        return entry
    return None


def _is_file(entry: Any) -> bool:
    path = _entry_path(entry)
    if path is None:
        return False
    try:
        return os.path.isfile(os.fspath(path))
    except (OSError, TypeError, ValueError):
        return False


def _with_path(entry: Any, path: str) -> Any:
    if isinstance(entry, tuple | list) and entry:
        return type(entry)([path, *entry[1:]])
    return path


@dataclass
class FileList:
    """A list attribute of a dataset that names one file per entry."""

    attr: str
    entries: Sequence[Any]


def find_file_list(obj: Any, length: int | None) -> FileList | None:
    """The first list attribute whose entries are existing files (`length` entries, if given)."""
    for name, value in vars(obj).items():
        if not isinstance(value, list | tuple) or not value:
            continue
        if length is not None and len(value) != length:
            continue
        step = max(1, len(value) // _PROBED)
        if all(_is_file(value[i]) for i in range(0, len(value), step)[:_PROBED]):
            return FileList(name, value)
    return None


class RamFiles:
    """A temporary folder in RAM (`/dev/shm` where there is one) holding copied files."""

    def __init__(self) -> None:
        shm = Path("/dev/shm")
        base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.root = Path(tempfile.mkdtemp(prefix="deploylab-cache-", dir=base))
        self.bytes = 0
        self._copies: dict[int, str] = {}
        # Removed when no longer used, at the latest when this process exits (never by a
        # forked DataLoader worker, which shares the folder).
        self._finalizer = weakref.finalize(self, _remove, self.root, os.getpid())

    def copy(self, entry: Any, key: int) -> str:
        """The RAM copy of the file named by `entry` (copied once per `key`)."""
        if key not in self._copies:
            source = os.fspath(_entry_path(entry))
            with open(source, "rb") as f:
                data = f.read()
            target = self.root / f"{key:06d}{Path(source).suffix}"
            target.write_bytes(data)
            self.bytes += len(data)
            if self.bytes > MAX_CACHE_BYTES:
                raise MemoryError(f"more than {MAX_CACHE_BYTES >> 20} MiB of files")
            self._copies[key] = str(target)
        return self._copies[key]

    def close(self) -> None:
        """Remove the copies."""
        self._finalizer()


def _remove(root: Path, owner: int) -> None:
    if os.getpid() == owner:
        shutil.rmtree(root, ignore_errors=True)


class _RamList(list[Any]):
    """A file list naming RAM copies; it keeps their `RamFiles` (and so the files) alive."""

    ram: RamFiles


def swapped_copy(dataset: Any, found: FileList, keys: Sequence[int], ram: RamFiles) -> Any:
    """A shallow copy of `dataset` whose file list points, entry `i`, at the RAM copy of
    entry `keys[i % len(keys)]` (the rest of entry `i`, e.g. its label, is kept)."""
    copies = [ram.copy(found.entries[k], k) for k in keys]
    entries = [_with_path(entry, copies[i % len(copies)]) for i, entry in enumerate(found.entries)]
    out = copy.copy(dataset)
    new: Any = _RamList(entries)
    new.ram = ram  # the copies live as long as the list that names them
    for name, value in vars(dataset).items():  # aliases too (ImageFolder's `imgs`)
        if value is found.entries:
            setattr(out, name, new)
    return out
