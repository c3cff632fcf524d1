"""Variant 2 of a streaming Hugging Face `datasets.IterableDataset`: its `.map()` functions run
lazily while the loader iterates (unlike `Dataset.map`, which runs once ahead), so they are
swapped for cheap stand-ins learned from one real call each."""

from __future__ import annotations

import copy
from typing import Any

from deploylab.dataloader.probe import Recorder, first_items
from deploylab.dataloader.spec import CheapTransform

HF_STREAM_HINT = "apply the augmentation with `dataset.map(fn)` on the IterableDataset"


def is_hf_stream(dataset: Any) -> bool:
    """Whether `dataset` is a streaming Hugging Face `datasets.IterableDataset` (duck-typed)."""
    return hasattr(dataset, "_ex_iterable") and hasattr(dataset, "map")


def _chain(ds: Any) -> list[Any]:
    """The examples-iterable nodes from the outermost to the source."""
    nodes, node = [], ds._ex_iterable
    while node is not None:
        nodes.append(node)
        node = getattr(node, "ex_iterable", None)
    return nodes


def _is_map(node: Any) -> bool:
    return type(node).__name__ == "MappedExamplesIterable" and callable(
        getattr(node, "function", None)
    )


def _rebuilt(ds: Any, functions: dict[int, Any]) -> Any:
    """A copy of `ds` whose map nodes at chain positions `functions` run the given functions."""
    nodes = [copy.copy(n) for n in _chain(ds)]
    for i, node in enumerate(nodes[:-1]):
        node.ex_iterable = nodes[i + 1]
    for i, fn in functions.items():
        nodes[i].function = fn
    out = copy.copy(ds)
    out._ex_iterable = nodes[0]
    return out


def swap_stream_maps(ds: Any) -> tuple[Any | None, str | None, str | None]:
    """A copy of the stream whose `.map()` functions are cheap stand-ins, or why not."""
    maps = {i: n for i, n in enumerate(_chain(ds)) if _is_map(n)}
    if not maps:
        return None, "the stream has no `.map()` function to turn off", HF_STREAM_HINT
    recorders = {i: Recorder(n.function) for i, n in maps.items()}
    first_items(_rebuilt(ds, dict(recorders)), 1, "your dataset's map functions")
    if any(not r.calls for r in recorders.values()):
        return None, "a `.map()` function was never called", HF_STREAM_HINT
    cheap = {i: CheapTransform(r.calls[0][1]) for i, r in recorders.items()}
    return _rebuilt(ds, dict(cheap)), None, None
