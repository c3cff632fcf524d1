"""Variants of a Hugging Face `datasets.Dataset` (map-style, Arrow-backed).

- reading: fetching rows from the Arrow files and, for image/audio columns that hold paths
  or URLs, the files they point to;
- decoding: the column features' decoding (`Image()` to PIL) in the formatter;
- augmentation: the transform set with `set_transform` / `with_transform`.
`Dataset.map` runs once, ahead of training: its work is stored in the Arrow files, so it is
not part of the loader's time. Variant 2 swaps the transform for a cheap stand-in learned
from one real call; variant 4 keeps a few rows in memory with their files' bytes embedded, so
only decoding and the stand-in run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from deploylab.dataloader.probe import Recorder, first_item
from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import CheapTransform
from deploylab.dataloader.usercode import call_user
from deploylab.dataloader.variants import Ablation, CycledDataset, ReplayDataset, VariantPlan

HF_HINT = "apply the transforms with `dataset.set_transform(fn)` (or `with_transform`)"


def is_hf_dataset(dataset: Any) -> bool:
    """Whether `dataset` is a Hugging Face `datasets.Dataset` (duck-typed)."""
    return all(hasattr(dataset, a) for a in ("_format_kwargs", "with_transform", "features"))


def _transform(ds: Any) -> Callable[[Any], Any] | None:
    if getattr(ds, "_format_type", None) != "custom":
        return None
    fn: Callable[[Any], Any] | None = ds._format_kwargs.get("transform")
    return fn


def _with(ds: Any, fn: Callable[[Any], Any]) -> Any:
    return ds.with_transform(
        fn, columns=ds._format_columns, output_all_columns=ds._output_all_columns
    )


def plan_hf(ds: Any, indices: Sequence[int]) -> Ablation:
    """The four variants of a Hugging Face dataset."""
    from deploylab.dataloader.adapters import checked

    first = indices[0]
    name = type(ds).__name__
    baseline = call_user(f"your dataset ({name})[{first}]", lambda: ds[first])
    plans = [VariantPlan(VariantName.BASELINE, ds)]
    transform = _transform(ds)
    no_aug = None
    if transform is None:
        why = "it has no transform (set_transform / with_transform) to turn off"
        plans.append(VariantPlan(VariantName.NO_AUGMENTATION, None, why, enable=HF_HINT))
    else:
        recorder = Recorder(transform)
        call_user("your dataset's transform", lambda: _with(ds, recorder)[first])
        no_aug = _with(ds, CheapTransform(recorder.calls[0][1]))
        plans.append(checked(VariantName.NO_AUGMENTATION, no_aug, baseline, first))
        if plans[-1].dataset is None:
            no_aug = None
    source = ds if no_aug is None else no_aug
    items = [first_item(source, i, "your dataset") for i in indices]
    plans.append(VariantPlan(VariantName.SYNTHETIC_READ, ReplayDataset(items, len(ds))))
    in_memory = call_user(
        "copying rows of your dataset to memory", lambda: _rows_in_memory(ds, indices)
    )
    if no_aug is not None:
        in_memory = _with(in_memory, no_aug._format_kwargs["transform"])
    note = f"{len(indices)} rows kept in memory with their files' bytes embedded; decoding runs"
    cycled = CycledDataset(in_memory, len(ds))
    plans.append(checked(VariantName.SYNTHETIC_DECODE, cycled, baseline, first, note))
    return Ablation("hugging face datasets", plans, removed="the dataset's transform")


def _rows_in_memory(ds: Any, indices: Sequence[int]) -> Any:
    """Rows `indices` of `ds` as an in-memory dataset, external files embedded as bytes,
    with the same format as `ds`."""
    import datasets
    from datasets.table import InMemoryTable, embed_table_storage
    from datasets.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Flattening the indices" bar in our output
    try:
        rows = ds.select(list(indices)).flatten_indices(keep_in_memory=True)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
    table = embed_table_storage(rows.data.table)
    out = datasets.Dataset(InMemoryTable(table), info=rows.info.copy())
    if ds._format_type != "custom":
        out = out.with_format(
            ds._format_type,
            columns=ds._format_columns,
            output_all_columns=ds._output_all_columns,
            **ds._format_kwargs,
        )
    return out
