"""The replay workload: one request per trace entry, at its recorded time.

Prompt text keeps the trace's sharing structure: Mooncake `hash_ids` become shared blocks of
`block_size` tokens (equal ids, equal text), and requests of one trace session are prefixes of
one growing text (the history a chat client resends). Other entries get unique text.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache

from deploylab.loadtest.scenario import ReplayWorkload
from deploylab.loadtest.text import WordSet, join
from deploylab.loadtest.traces import TraceEntry
from deploylab.loadtest.workload import (
    STREAM_BLOCK,
    STREAM_REQUEST,
    STREAM_TRACE_SESSION,
    Turn,
    WorkItem,
    rng_for,
)

_CHUNK = 256  # words per chunk of a session's growing text
_CHARS_PER_TOKEN = 4  # rule of thumb for output_text without a tokenizer


class ReplayGenerator:
    """Builds trace entries into work items; offsets come from the trace (scaled)."""

    def __init__(self, spec: ReplayWorkload, entries: list[TraceEntry], words: WordSet, seed: int):
        self.spec, self.entries, self.words, self.seed = spec, entries, words, seed
        self._block = lru_cache(maxsize=4096)(self._make_block)
        self._chunk = lru_cache(maxsize=4096)(self._make_chunk)

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_block"], state["_chunk"]  # caches are rebuilt in each process
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._block = lru_cache(maxsize=4096)(self._make_block)
        self._chunk = lru_cache(maxsize=4096)(self._make_chunk)

    def _make_block(self, block_id: int) -> list[str]:
        rng = rng_for(self.seed, STREAM_BLOCK, block_id)
        return self.words.words(rng, self.spec.block_size).split(" ")

    def _make_chunk(self, session_key: int, chunk: int) -> list[str]:
        rng = rng_for(self.seed, STREAM_TRACE_SESSION, session_key * 1_000_003 + chunk)
        return self.words.words(rng, _CHUNK).split(" ")

    def _prefix(self, parts: list[list[str]], n: int) -> list[str]:
        out: list[str] = []
        for part in parts:
            if len(out) >= n:
                break
            out.extend(part[: n - len(out)])
        return out

    def _text(self, index: int, entry: TraceEntry, n_in: int) -> str:
        if entry.hash_ids:
            blocks = [self._block(h) for h in entry.hash_ids]
            shared = self._prefix(blocks, n_in)
        elif entry.session is not None:
            key = zlib.crc32(entry.session.encode())
            chunks = [self._chunk(key, c) for c in range(math.ceil(n_in / _CHUNK))]
            shared = self._prefix(chunks, n_in)
        else:
            shared = []
        rest = n_in - len(shared)
        unique = self.words.words(rng_for(self.seed, STREAM_REQUEST, index), rest, unique=index)
        return join(" ".join(shared), unique)

    def _output_tokens(self, entry: TraceEntry) -> int:
        if entry.output_tokens is not None:
            n = entry.output_tokens
        elif entry.output_text is not None:
            n = max(1, math.ceil(len(entry.output_text) / _CHARS_PER_TOKEN))
        else:
            n = self.spec.default_output_tokens
        if self.spec.max_output_tokens is not None:
            n = min(n, self.spec.max_output_tokens)
        return n

    def item(self, index: int) -> WorkItem:
        entry = self.entries[index]
        n_out = self._output_tokens(entry)
        if entry.input_text is not None:
            content = entry.input_text
            n_in = len(content.split())  # approximate: the server's usage is preferred
        else:
            assert entry.input_tokens is not None
            n_in = entry.input_tokens
            if self.spec.max_input_tokens is not None:
                n_in = min(n_in, self.spec.max_input_tokens)
            content = self._text(index, entry, n_in)
        classes = {"model": entry.model or "default", **entry.labels}
        return WorkItem(
            index,
            [Turn(content, n_in, n_out)],
            model=entry.model,
            session=entry.session,
            classes=classes,
        )

    def model_names(self) -> list[str]:
        return sorted({e.model for e in self.entries if e.model is not None})

    def needs_default_model(self) -> bool:
        return any(e.model is None for e in self.entries)

    def recorded_offsets(self) -> list[float] | None:
        return [e.timestamp_s / self.spec.time_scale for e in self.entries]
