"""Variants of an `IterableDataset`: a stream read in order, so samples are cached as they
come (the first few) rather than by index.

- a pipeline of stages (webdataset's `DataPipeline` / `WebDataset`: shard list -> tar reader
  -> `.decode()` -> `.map()` ...): variant 2 swaps the functions of its `map`, `map_dict`
  and `map_tuple` stages for cheap stand-ins; variant 4 caches the encoded samples that
  reach the first `decode` stage and runs the stages from there on;
- a streaming Hugging Face `datasets.IterableDataset`: variant 2 swaps its `.map()`
  functions (see `adapt_hf_stream`); variant 4 is not formed;
- any other stream with a `transform` attribute: variant 2 swaps it; variant 4 points an
  attribute listing its files (or shards) at RAM copies of the first few.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset

from deploylab.dataloader.adapt_hf_stream import is_hf_stream, swap_stream_maps
from deploylab.dataloader.probe import Recorder, first_items, swap_transform
from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import CheapTransform
from deploylab.dataloader.variants import Ablation, ReplayIterable, VariantPlan
from deploylab.errors import UsageError

_MAPS = ("_map", "_map_dict", "_map_tuple")
_DECODES = ("_decode", "_xdecode")
WDS_DECODE_HINT = "decode with the pipeline's `.decode(...)` stage before `.map(...)`"
WDS_MAP_HINT = "apply the augmentation with `.map(fn)` (or `.map_tuple` / `.map_dict`)"


def _stage_kind(stage: Any) -> str:
    """`_map`, `_decode`, ...: the name of the filter function a pipeline stage runs; a map
    of a decoder (webdataset's `.decode()` is `.map(Decoder(...))`) counts as `_decode`."""
    fn = getattr(stage, "f", None)
    kind = getattr(fn, "__name__", "") if callable(fn) else ""
    args = getattr(stage, "args", ())
    if kind == "_map" and args and "decode" in type(args[0]).__name__.lower():
        return "_decode"
    return kind


class _Source(IterableDataset[Any]):
    """The first stage of a pipeline: endless cached encoded samples."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield from copy.deepcopy(self.items)


def plan_iterable(ds: IterableDataset[Any], count: int) -> Ablation:
    """The four variants of an IterableDataset; the first `count` items are cached."""
    from deploylab.dataloader.adapters import _ram_variant, checked

    name = type(ds).__name__
    baseline_items = first_items(ds, count, f"your dataset ({name})")
    if not baseline_items:
        raise UsageError(f"{name} yields no samples: there is nothing to load. Check its source.")
    baseline = baseline_items[0]
    plans = [VariantPlan(VariantName.BASELINE, ds)]
    stages = getattr(ds, "pipeline", None)
    staged = isinstance(stages, list) and bool(stages) and not hasattr(ds, "transform")
    stream = is_hf_stream(ds)
    if staged:
        no_aug, why, hint = _swap_maps(ds)
    elif stream:
        no_aug, why, hint = swap_stream_maps(ds)
    else:
        no_aug, why, hint = swap_transform(ds, 0)
    if no_aug is None:
        plans.append(VariantPlan(VariantName.NO_AUGMENTATION, None, why, enable=hint))
    else:
        plans.append(checked(VariantName.NO_AUGMENTATION, no_aug, baseline, 0))
    source = plans[-1].dataset if plans[-1].dataset is not None else ds
    items = baseline_items if source is ds else first_items(source, count, "your dataset")
    plans.append(VariantPlan(VariantName.SYNTHETIC_READ, ReplayIterable(items)))
    adapter = "webdataset pipeline" if staged else "hugging face stream" if stream else "iterable"
    ablation = Ablation(adapter, plans)
    if staged:
        plans.append(_cached_encoded(source, baseline, count))
        ablation.removed = "the pipeline's map stages"
    elif stream:
        ablation.removed = "the stream's map functions"
        why = "a streaming dataset's rows come from its source files or shards one by one"
        hint = "save it with `save_to_disk` (or load it without streaming) to cache rows by index"
        plans.append(VariantPlan(VariantName.SYNTHETIC_DECODE, None, why, enable=hint))
    else:
        plans.append(_ram_variant(ablation, source, baseline, range(count), None, 0))
    return ablation


def _swap_maps(ds: Any) -> tuple[Any | None, str | None, str | None]:
    """A copy of the pipeline whose map stages run cheap stand-ins of the user's functions."""
    maps = [i for i, s in enumerate(ds.pipeline) if _stage_kind(s) in _MAPS]
    if not maps:
        return None, "the pipeline has no map stage to turn off", WDS_MAP_HINT
    probe = copy.copy(ds)
    probe.pipeline = list(ds.pipeline)
    recorders: dict[int, dict[Any, Recorder]] = {}
    for i in maps:
        probe.pipeline[i], recorders[i] = _with_functions(ds.pipeline[i], Recorder)
    first_items(probe, 1, "your pipeline")
    out = copy.copy(ds)
    out.pipeline = list(ds.pipeline)
    for i in maps:
        calls = {key: r.calls for key, r in recorders[i].items()}
        if any(not c for c in calls.values()):
            return None, "a map stage's function was never called", WDS_MAP_HINT
        out.pipeline[i], _ = _with_functions(
            ds.pipeline[i], lambda fn, key, c=calls: CheapTransform(c[key][0][1])
        )
    return out, None, None


def _with_functions(stage: Any, make: Any) -> tuple[Any, dict[Any, Any]]:
    """A copy of a map stage with each user function `fn` replaced by `make(fn, key)`."""
    new = copy.copy(stage)
    made: dict[Any, Any] = {}
    kind = _stage_kind(stage)

    def wrap(fn: Any, key: Any) -> Any:
        made[key] = make(fn) if make is Recorder else make(fn, key)
        return made[key]

    if kind == "_map":
        new.args = (wrap(stage.args[0], 0), *stage.args[1:])
    elif kind == "_map_tuple":
        new.args = tuple(wrap(fn, i) if callable(fn) else fn for i, fn in enumerate(stage.args))
    else:  # _map_dict: the functions are keyword arguments, by the key they apply to
        new.kw = {
            k: wrap(fn, k) if callable(fn) and k != "handler" else fn for k, fn in stage.kw.items()
        }
    return new, made


def _cached_encoded(source: Any, baseline: Any, count: int) -> VariantPlan:
    """Variant 4 of a pipeline: encoded samples cached where they reach `decode`."""
    from deploylab.dataloader.adapters import checked

    stages = source.pipeline
    decodes = [i for i, s in enumerate(stages) if _stage_kind(s) in _DECODES]
    name = VariantName.SYNTHETIC_DECODE
    if not decodes:
        why = "the pipeline has no decode stage, so encoded samples can't be cached"
        return VariantPlan(name, None, why, enable=WDS_DECODE_HINT)
    d = decodes[0]
    reader = copy.copy(source)
    reader.pipeline = list(stages[:d])
    raws = first_items(reader, count, "your pipeline's reading stages")
    variant = copy.copy(source)
    variant.pipeline = [_Source(raws), *stages[d:]]
    note = f"{len(raws)} encoded samples cached before the decode stage; decoding runs"
    return checked(name, variant, baseline, 0, note)
