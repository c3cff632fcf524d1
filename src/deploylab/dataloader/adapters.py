"""Finding the read, decode and augment stages in a dataset, and forming the four variants.

Datasets are taken as users write them; nothing needs restructuring:
- `StagedDataset`: the stages are given, every variant is exact;
- a map-style dataset with a `transform` attribute (torchvision style, `ImageFolder`,
  `DatasetFolder`): variant 2 swaps `transform` for a cheap stand-in learned from one real
  call (what `__getitem__` does with its result afterwards still runs); variant 4 points the
  attribute listing one file per sample (`paths`, `samples`, ...) at RAM copies of a few
  files, so the dataset's own code (its `loader` included) opens and decodes them;
- Hugging Face `datasets` and `IterableDataset` pipelines: see `adapt_hf` and `adapt_iter`;
- a costly `collate_fn` is swapped for a cheap one in variants 2 to 4.
A variant that cannot be formed, or whose samples differ in shape or dtype from the
baseline's, is skipped with the reason and the one-line change that would enable it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset, IterableDataset, default_collate

from deploylab.dataloader.filecache import RamFiles, find_file_list, swapped_copy
from deploylab.dataloader.probe import cheap_collate, first_item, swap_transform
from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import CheapTransform, Slot, describe_spec, spec_of
from deploylab.dataloader.stages import StagedDataset
from deploylab.dataloader.usercode import call_user
from deploylab.dataloader.variants import (
    Ablation,
    DecodeOnlyDataset,
    ReplayDataset,
    VariantPlan,
)

FILES_HINT = (
    "keep one file path per sample in a list attribute, e.g. `self.files = sorted(root.glob("
    "'*.jpg'))`, and open `self.files[index]` in __getitem__"
)


def plan_ablation(
    dataset: Any, indices: Sequence[int], loader_kwargs: Mapping[str, Any] | None = None
) -> Ablation:
    """Form the four variants of `dataset`; `indices` are the samples cached for replay (for
    an IterableDataset, the first `len(indices)` items are)."""
    from deploylab.dataloader.adapt_hf import is_hf_dataset, plan_hf
    from deploylab.dataloader.adapt_iter import plan_iterable

    kwargs = dict(loader_kwargs or {})
    if isinstance(dataset, IterableDataset):
        ablation = plan_iterable(dataset, len(indices))
    elif isinstance(dataset, StagedDataset):
        ablation = _plan_staged(dataset, indices, len(dataset))
    elif is_hf_dataset(dataset):
        ablation = plan_hf(dataset, indices)
    else:
        ablation = _plan_map(dataset, indices, len(dataset))
    try:
        _swap_collate(ablation, kwargs)
    except BaseException:
        ablation.close()
        raise
    return ablation


def _item(dataset: Any, index: int, label: str = "your dataset") -> Any:
    return first_item(dataset, index, label)


def checked(
    name: VariantName, dataset: Any, baseline: Any, index: int, note: str | None = None
) -> VariantPlan:
    """The plan, or a skip when the variant's item differs in shape/dtype from the baseline's."""
    item = _item(dataset, index, f"the {name.value} variant of your dataset")
    if spec_of(item) != spec_of(baseline):
        reason = (
            f"its samples would be {describe_spec(spec_of(item))} instead of "
            f"{describe_spec(spec_of(baseline))}, so the comparison would not be fair"
        )
        return VariantPlan(name, None, reason)
    return VariantPlan(name, dataset, note=note)


_checked = checked


def _swap_collate(ablation: Ablation, kwargs: Mapping[str, Any]) -> None:
    """Variants 2-4 get a cheap stand-in for a costly `collate_fn` (variant 2 is formed from
    the baseline's dataset if the dataset itself had nothing to turn off)."""
    collate = kwargs.get("collate_fn")
    if collate is None or collate is default_collate:
        return
    plans = {p.name: p for p in ablation.plans}
    replay = plans[VariantName.SYNTHETIC_READ].dataset
    items = replay.items if replay is not None else []
    batch = kwargs.get("batch_size", 1) or 1
    cheap, why = cheap_collate(collate, items, batch) if items else (None, "no cached samples")
    if cheap is None:
        note = f"collate_fn kept as is: {why}"
        for p in ablation.plans[1:]:
            p.note = note if p.note is None else f"{p.note}; {note}"
        return
    no_aug = plans[VariantName.NO_AUGMENTATION]
    if no_aug.dataset is None:
        no_aug.dataset, no_aug.skipped_reason, no_aug.enable = (
            plans[VariantName.BASELINE].dataset,
            None,
            None,
        )
        no_aug.note = "only collate_fn replaced (the dataset had no transforms to turn off)"
        ablation.removed = "collate_fn"
    else:
        ablation.removed += " and collate_fn"
    for p in ablation.plans[1:]:
        if p.dataset is not None:
            p.collate_fn = cheap


def _plan_staged(ds: StagedDataset, indices: Sequence[int], length: int) -> Ablation:
    first = indices[0]
    baseline = _item(ds, first)
    plans = [VariantPlan(VariantName.BASELINE, ds)]
    cheap: CheapTransform | None = None
    if ds.augment is None:
        plans.append(VariantPlan(VariantName.NO_AUGMENTATION, None, "it has no augment stage"))
        replay_source: Dataset[Any] = ds
    else:
        decoded = call_user("your read/decode", lambda: _read_decode(ds, first))
        reference = call_user("your augment", lambda: ds.augment(decoded))  # type: ignore[misc]
        cheap = CheapTransform(reference)
        no_aug = copy.copy(ds)
        no_aug.augment = cheap
        plan = _checked(VariantName.NO_AUGMENTATION, no_aug, baseline, first)
        plans.append(plan)
        replay_source = no_aug if plan.dataset is not None else ds
    items = [_item(replay_source, i) for i in indices]
    plans.append(VariantPlan(VariantName.SYNTHETIC_READ, ReplayDataset(items, length)))
    if ds.decode is None:
        reason = "it has no decode stage (read returns ready samples)"
        plans.append(VariantPlan(VariantName.SYNTHETIC_DECODE, None, reason))
    else:
        raws = [_read(ds, i) for i in indices]
        templates = [Slot() if ds.labels is None else (Slot(), ds.labels[i]) for i in indices]
        decode_only = DecodeOnlyDataset(raws, templates, ds.decode, cheap, length)
        plans.append(_checked(VariantName.SYNTHETIC_DECODE, decode_only, baseline, 0))
    return Ablation("staged", plans)


def _read(ds: StagedDataset, index: int) -> Any:
    return call_user("your read", lambda: ds.read(ds.sources[index]))


def _read_decode(ds: StagedDataset, index: int) -> Any:
    sample = ds.read(ds.sources[index])
    return sample if ds.decode is None else ds.decode(sample)


def _plan_map(ds: Any, indices: Sequence[int], length: int) -> Ablation:
    """A map-style dataset: `transform` swapped, files listed in an attribute copied to RAM."""
    first = indices[0]
    baseline = _item(ds, first)
    plans = [VariantPlan(VariantName.BASELINE, ds)]
    no_aug, why, hint = swap_transform(ds, first)
    if no_aug is None:
        plans.append(VariantPlan(VariantName.NO_AUGMENTATION, None, why, enable=hint))
    else:
        plans.append(checked(VariantName.NO_AUGMENTATION, no_aug, baseline, first))
    source = plans[-1].dataset if plans[-1].dataset is not None else ds
    items = [_item(source, i) for i in indices]
    plans.append(VariantPlan(VariantName.SYNTHETIC_READ, ReplayDataset(items, length)))
    ablation = Ablation("transform" if hasattr(ds, "transform") else "opaque", plans)
    plans.append(_ram_variant(ablation, source, baseline, indices, length, first))
    return ablation


def _ram_variant(
    ablation: Ablation,
    source: Any,
    baseline: Any,
    keys: Sequence[int],
    length: int | None,
    index: int,
) -> VariantPlan:
    """Variant 4 by file list: `source` reading RAM copies of the files of `keys`."""
    found = find_file_list(source, length)
    name = VariantName.SYNTHETIC_DECODE
    if found is None:
        why = f"no attribute of {type(source).__name__} lists its files, so reads can't be cached"
        return VariantPlan(name, None, why, enable=FILES_HINT)
    ram = RamFiles()
    ablation.cleanup.append(ram.close)
    try:
        variant = call_user(
            "copying your files to RAM", lambda: swapped_copy(source, found, keys, ram)
        )
    except MemoryError as exc:
        why = f"the files in `{found.attr}` are too big to copy to RAM ({exc})"
        return VariantPlan(name, None, why)
    loader = " with its `loader`" if callable(getattr(source, "loader", None)) else ""
    note = (
        f"the files in `{found.attr}` of {len(keys)} samples copied to RAM ({ram.root.parent}); "
        f"the dataset still opens and decodes them{loader}"
    )
    return checked(name, variant, baseline, index, note)
