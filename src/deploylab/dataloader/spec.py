"""Shapes and dtypes of samples, and the cheapest transform that keeps them.

A variant is only fair if the training step sees the same shapes and dtypes as in the
baseline; `spec_of` describes a sample so variants can be checked against it, and
`CheapTransform` replaces a user's transforms with a crop/pad and a cast to the same spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def spec_of(obj: Any) -> Any:
    """A hashable description of a sample's structure, shapes and dtypes (not its values)."""
    if isinstance(obj, torch.Tensor):
        return ("tensor", tuple(obj.shape), str(obj.dtype))
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.shape, str(obj.dtype))
    if _is_pil(obj):
        return ("PIL.Image", obj.size, obj.mode)
    if isinstance(obj, Mapping):
        return ("dict", tuple((k, spec_of(v)) for k, v in obj.items()))
    if isinstance(obj, tuple | list):
        return (type(obj).__name__, tuple(spec_of(v) for v in obj))
    return (type(obj).__name__,)


def describe_spec(spec: Any) -> str:
    """A short human-readable form of `spec_of`'s result."""
    kind = spec[0]
    if kind in ("tensor", "ndarray"):
        return f"{kind}{list(spec[1])} {spec[2]}"
    if kind == "PIL.Image":
        return f"PIL image {spec[1][0]}x{spec[1][1]} {spec[2]}"
    if kind == "dict":
        return "{" + ", ".join(f"{k}: {describe_spec(v)}" for k, v in spec[1]) + "}"
    if kind in ("tuple", "list"):
        return "(" + ", ".join(describe_spec(v) for v in spec[1]) + ")"
    return kind


def _is_pil(obj: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        return False
    return isinstance(obj, Image.Image)


def _as_array(obj: Any) -> np.ndarray | None:
    if isinstance(obj, np.ndarray):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if _is_pil(obj):
        return np.asarray(obj)
    return None


def _fit(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """Crop or zero-pad `arr` to `shape`; HWC images become CHW when that is what fits."""
    if arr.ndim == 2 and len(shape) == 3 and 1 in (shape[0], shape[-1]):
        arr = arr[None] if shape[0] == 1 else arr[..., None]
    if arr.ndim == 3 and len(shape) == 3 and arr.shape[2] == shape[0] != arr.shape[0]:
        arr = arr.transpose(2, 0, 1)
    if arr.ndim != len(shape):
        return None
    out = np.zeros(shape, dtype=arr.dtype)
    region = tuple(slice(0, min(a, s)) for a, s in zip(arr.shape, shape, strict=True))
    out[region] = arr[region]
    return out


class CheapTransform:
    """The cheapest transform with the reference output's structure, shapes and dtypes.

    Learned from one real call of the user's transform (`reference` is what it returned).
    Array-like inputs (PIL images, arrays, tensors) are cropped or zero-padded to the
    reference shape and cast to its dtype, so the real pixels still flow on; dicts, tuples and
    lists are followed part by part (a dict's key is looked up in the input, else its main
    image or array is used); parts that cannot be related to the input are copies of the
    reference (`fixed` is then set).
    """

    def __init__(self, reference: Any) -> None:
        self.reference = reference
        self.fixed = False  # set when a call had to return (part of) the reference itself

    def __call__(self, x: Any) -> Any:
        return self._make(self.reference, x)

    def _make(self, ref: Any, x: Any) -> Any:
        if isinstance(ref, Mapping):
            return {k: self._make(v, _pick(x, k)) for k, v in ref.items()}
        if isinstance(ref, tuple | list) and ref:
            if isinstance(x, tuple | list) and len(x) == len(ref):
                parts = [self._make(r, xi) for r, xi in zip(ref, x, strict=True)]
            elif isinstance(x, list) and isinstance(ref, list) and x:  # a batch of other size
                parts = [self._make(ref[0], xi) for xi in x]
            else:
                parts = [self._make(r, x) for r in ref]
            return _rebuild(ref, parts)
        if isinstance(ref, torch.Tensor | np.ndarray):
            arr = _as_array(x)
            fitted = None if arr is None else _fit(arr, tuple(ref.shape))
            if fitted is not None:
                if isinstance(ref, torch.Tensor):
                    return torch.from_numpy(fitted).to(ref.dtype)
                return fitted.astype(ref.dtype, copy=False)
        elif _is_pil(ref) and _is_pil(x):
            return _fit_pil(x, ref)
        elif isinstance(ref, int | float | str | bytes | bool) or ref is None:
            return ref  # labels and other plain values pass as they were
        self.fixed = True
        return _copy(ref)


def _is_arraylike(obj: Any) -> bool:
    return isinstance(obj, torch.Tensor | np.ndarray) or _is_pil(obj)


def _is_list_of_arrays(obj: Any) -> bool:
    return isinstance(obj, tuple | list) and bool(obj) and _is_arraylike(obj[0])


def _pick(x: Any, key: Any) -> Any:
    """The part of input `x` that output `key` comes from: `x[key]`, else its main array."""
    if not isinstance(x, Mapping):
        return x
    if key in x:
        return x[key]
    for value in x.values():
        if _is_arraylike(value) or _is_list_of_arrays(value):
            return value
    return None


def _fit_pil(x: Any, ref: Any) -> Any:
    """`x` in the mode and size of PIL image `ref` (cropped, or padded with black)."""
    if x.mode != ref.mode:
        x = x.convert(ref.mode)
    if x.size != ref.size:
        x = x.crop((0, 0, ref.size[0], ref.size[1]))
    return x


def _copy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if _is_pil(obj):
        return obj.copy()
    if isinstance(obj, Mapping):
        return {k: _copy(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return _rebuild(obj, [_copy(v) for v in obj])
    return obj


def _rebuild(seq: tuple[Any, ...] | list[Any], values: list[Any]) -> Any:
    if hasattr(seq, "_fields"):  # a namedtuple takes its fields as arguments
        return type(seq)(*values)
    return type(seq)(values)


class Slot:
    """Stands for the transformed sample inside an item (e.g. the image in `(image, label)`)."""

    def __repr__(self) -> str:
        return "<sample slot>"


def fill_slot(template: Any, value: Any) -> Any:
    """A copy of `template` with its `Slot` replaced by `value`."""
    if isinstance(template, Slot):
        return value
    if isinstance(template, Mapping):
        return {k: fill_slot(v, value) for k, v in template.items()}
    if isinstance(template, tuple | list):
        return _rebuild(template, [fill_slot(v, value) for v in template])
    return template
