"""Parsing and checking of the user-facing ARMT options (contexts, device, dtype, shape)."""

from __future__ import annotations

import torch

from deploylab.errors import UsageError

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def parse_contexts(text: str) -> tuple[int, ...]:
    """ "8192,32768,131072" or "8k,32k,128k" (k = 1024) -> token counts."""
    out: list[int] = []
    for part in text.split(","):
        item = part.strip().lower()
        if not item:
            continue
        scale = 1024 if item.endswith("k") else 1
        digits = item[:-1] if scale > 1 else item
        if not digits.isdigit() or int(digits) == 0:
            raise UsageError(
                f"Bad context length '{part.strip()}' in --context '{text}': give positive "
                "token counts separated by commas, e.g. 8192,32768,131072 or 8k,32k,128k."
            )
        out.append(int(digits) * scale)
    if not out:
        raise UsageError("--context is empty: give at least one token count, e.g. 8192.")
    return tuple(out)


def resolve_device(name: str) -> torch.device:
    """ "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N"."""
    key = name.strip().lower()
    if key == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(key)
    except RuntimeError:
        raise UsageError(f"Unknown device '{name}'. Use auto, cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"Device '{name}' is not supported. Use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("CUDA was requested but no CUDA device is visible. Use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"Device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s)."
            )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """ "auto" (bfloat16 on CUDA, float32 on CPU) or a dtype name."""
    key = name.strip().lower()
    if key == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if key not in _DTYPES:
        raise UsageError(f"Unknown dtype '{name}'. Use auto, bfloat16, float16 or float32.")
    return _DTYPES[key]


def check_shape(name: str) -> str:
    """`name` if it is an engine shape preset; UsageError lists the known ones."""
    from deploylab.engine.models.presets import PRESETS

    if name.lower() not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise UsageError(f"Unknown model shape '{name}'. Known shapes: {known}.")
    return name.lower()
