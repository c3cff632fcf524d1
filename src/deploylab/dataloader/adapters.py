"""Finding the read, decode and augment stages in a dataset, and forming the four variants.

Three kinds of dataset are understood:
- `StagedDataset`: the stages are given, every variant is exact;
- a dataset with a `transform` attribute (torchvision style): variant 2 swaps the transform
  for the cheap one; variant 4 is formed when the sample before the transform is a file
  listed in one of the dataset's attributes, decoded with PIL (or NumPy for `.npy`), which is
  checked by decoding it and comparing with what the dataset produced;
- anything else: only the baseline and a replay of cached samples.
A variant that cannot be formed, or whose samples differ in shape or dtype from the
baseline's, is skipped with the reason.
"""

from __future__ import annotations

import copy
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from deploylab.dataloader.report import VariantName
from deploylab.dataloader.spec import (
    CheapTransform,
    Slot,
    count_slots,
    describe_spec,
    spec_of,
)
from deploylab.dataloader.stages import StagedDataset
from deploylab.dataloader.usercode import call_user
from deploylab.dataloader.variants import (
    Ablation,
    DecodeOnlyDataset,
    ReplayDataset,
    VariantPlan,
)

_WRAP_HINT = "wrap it in deploylab.dataloader.StagedDataset(sources, read, decode, augment)"


def plan_ablation(dataset: Dataset[Any], indices: Sequence[int]) -> Ablation:
    """Form the four variants of `dataset`; `indices` are the samples cached for replay."""
    length = len(dataset)  # type: ignore[arg-type]
    if isinstance(dataset, StagedDataset):
        return _plan_staged(dataset, indices, length)
    if hasattr(dataset, "transform"):
        return _plan_transform(dataset, indices, length)
    return _plan_opaque(dataset, indices, length)


def _item(dataset: Dataset[Any], index: int, label: str = "your dataset") -> Any:
    return call_user(f"{label}[{index}]", lambda: dataset[index])


def _checked(
    name: VariantName, dataset: Dataset[Any], baseline: Any, index: int, note: str | None = None
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


class _Capture:
    """Stands in for a dataset's `transform`: remembers its input, returns a `Slot`."""

    def __init__(self) -> None:
        self.last: Any = None

    def __call__(self, x: Any) -> Slot:
        self.last = x
        return Slot()


def _plan_transform(ds: Dataset[Any], indices: Sequence[int], length: int) -> Ablation:
    transform = ds.transform  # type: ignore[attr-defined]
    first = indices[0]
    baseline = _item(ds, first)
    plans = [VariantPlan(VariantName.BASELINE, ds)]
    probe = copy.copy(ds)
    capture = _Capture()
    probe.transform = capture  # type: ignore[attr-defined]
    inputs: list[Any] = []
    templates: list[Any] = []
    try:
        for i in indices:
            templates.append(probe[i])
            inputs.append(capture.last)
    except Exception as exc:  # the dataset uses the transform's result in ways we can't follow
        why = (
            f"with `transform` replaced, {type(ds).__name__}[i] raised "
            f"{type(exc).__name__}: {exc}; {_WRAP_HINT}"
        )
        return _replay_only(ds, indices, length, "transform (not followed)", baseline, why)
    if len(templates) != len(indices) or any(count_slots(t) != 1 for t in templates):
        why = f"its `transform` result is not returned as one part of the item; {_WRAP_HINT}"
        return _replay_only(ds, indices, length, "transform (not followed)", baseline, why)

    cheap: CheapTransform | None = None
    if transform is None:
        plans.append(VariantPlan(VariantName.NO_AUGMENTATION, None, "its `transform` is None"))
        replay_source = ds
    else:
        reference = call_user("your dataset's transform", lambda: transform(inputs[0]))
        cheap = CheapTransform(reference)
        no_aug = copy.copy(ds)
        no_aug.transform = cheap  # type: ignore[attr-defined]
        plan = _checked(VariantName.NO_AUGMENTATION, no_aug, baseline, first)
        plans.append(plan)
        replay_source = no_aug if plan.dataset is not None else ds
    items = [_item(replay_source, i) for i in indices]
    plans.append(VariantPlan(VariantName.SYNTHETIC_READ, ReplayDataset(items, length)))

    found = _find_files(ds, indices, length)
    if found is None:
        reason = f"no attribute lists its files, so encoded bytes can't be cached; {_WRAP_HINT}"
        plans.append(VariantPlan(VariantName.SYNTHETIC_DECODE, None, reason))
        return Ablation("transform", plans)
    attr, paths = found
    raws = [p.read_bytes() for p in paths]
    decoder = _matching_decoder(raws[0], inputs[0])
    if decoder is None:
        reason = (
            f"the sample before `transform` is not the file in `{attr}` decoded by PIL or "
            f"NumPy, so decoding can't be isolated; {_WRAP_HINT}"
        )
        plans.append(VariantPlan(VariantName.SYNTHETIC_DECODE, None, reason))
        return Ablation("transform", plans)
    decode_only = DecodeOnlyDataset(raws, templates, decoder, cheap, length)
    note = f"files found in `{attr}`, decoded with {decoder}"
    plans.append(_checked(VariantName.SYNTHETIC_DECODE, decode_only, baseline, 0, note))
    return Ablation("transform", plans)


def _plan_opaque(ds: Dataset[Any], indices: Sequence[int], length: int) -> Ablation:
    baseline = _item(ds, indices[0])
    why = f"{type(ds).__name__} has no `transform` attribute to turn off; {_WRAP_HINT}"
    return _replay_only(ds, indices, length, "opaque", baseline, why)


def _replay_only(
    ds: Dataset[Any], indices: Sequence[int], length: int, adapter: str, baseline: Any, why: str
) -> Ablation:
    del baseline  # already computed; kept in the signature for symmetry with the others
    items = [_item(ds, i) for i in indices]
    note = "replays cached baseline samples: transforms could not be turned off first"
    return Ablation(
        adapter,
        [
            VariantPlan(VariantName.BASELINE, ds),
            VariantPlan(VariantName.NO_AUGMENTATION, None, why),
            VariantPlan(VariantName.SYNTHETIC_READ, ReplayDataset(items, length), note=note),
            VariantPlan(VariantName.SYNTHETIC_DECODE, None, why),
        ],
    )


def _find_files(
    ds: Dataset[Any], indices: Sequence[int], length: int
) -> tuple[str, list[Path]] | None:
    """An attribute listing one file per sample (paths or `(path, label)` pairs), if any."""
    for name, value in vars(ds).items():
        if not isinstance(value, list | tuple) or len(value) != length:
            continue
        paths = [_as_path(value[i]) for i in indices]
        if all(p is not None and p.is_file() for p in paths):
            return name, [p for p in paths if p is not None]
    return None


def _as_path(entry: Any) -> Path | None:
    if isinstance(entry, tuple | list) and entry:
        entry = entry[0]
    if isinstance(entry, str | os.PathLike):
        return Path(entry)
    return None


class PilDecoder:
    """Encoded image bytes -> PIL image in `mode` (or its array when `as_array`)."""

    def __init__(self, mode: str, as_array: bool) -> None:
        self.mode = mode
        self.as_array = as_array

    def __call__(self, raw: bytes) -> Any:
        from PIL import Image

        image: Image.Image = Image.open(io.BytesIO(raw))
        if image.mode != self.mode:
            image = image.convert(self.mode)
        else:
            image.load()
        return np.asarray(image) if self.as_array else image

    def __repr__(self) -> str:
        return f"PIL (mode {self.mode}{', as array' if self.as_array else ''})"


class NpyDecoder:
    """`.npy` bytes -> NumPy array."""

    def __call__(self, raw: bytes) -> np.ndarray:
        return np.load(io.BytesIO(raw), allow_pickle=False)

    def __repr__(self) -> str:
        return "numpy.load"


_MODES_BY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}


def _matching_decoder(raw: bytes, decoded: Any) -> PilDecoder | NpyDecoder | None:
    """The decoder that turns `raw` into exactly `decoded`, if one of ours does."""
    from PIL import Image

    candidates: list[PilDecoder | NpyDecoder] = []
    if isinstance(decoded, Image.Image):
        candidates.append(PilDecoder(decoded.mode, as_array=False))
    elif isinstance(decoded, np.ndarray):
        candidates.append(NpyDecoder())
        channels = 1 if decoded.ndim == 2 else decoded.shape[-1]
        if decoded.dtype == np.uint8 and channels in _MODES_BY_CHANNELS:
            candidates.append(PilDecoder(_MODES_BY_CHANNELS[channels], as_array=True))
    target = np.asarray(decoded)
    for decoder in candidates:
        try:
            mine = np.asarray(decoder(raw))
        except Exception:  # not this format
            continue
        if mine.shape == target.shape and mine.dtype == target.dtype:
            if np.array_equal(mine, target):
                return decoder
    return None
