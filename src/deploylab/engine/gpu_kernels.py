"""Fused small ops for the CUDA path, as Triton kernels: residual add + RMSNorm, SiLU-and-mul,
rotary embedding with the store of keys/values into the paged cache.

A decode step at small batch is bound by the number of kernels more than by their work:
unfused, RMSNorm is ~7 elementwise kernels, RoPE ~5 per tensor, SiLU-and-mul 2. Each kernel
here does one pass with float32 arithmetic and one rounding to the output dtype. The CPU
path keeps the plain PyTorch ops (and their exact rounding).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


@functools.cache
def _kernels() -> dict[str, Any]:
    import triton
    import triton.language as tl

    @triton.jit
    def _rmsnorm(  # type: ignore[no-untyped-def]
        X, R, W, OUT, ROUT, stride_x, stride_r, stride_o, n, eps,
        HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0)
        if HAS_RES:
            x = x.to(tl.float32) + tl.load(R + row * stride_r + cols, mask=mask, other=0.0)
            x = x.to(OUT.dtype.element_ty)
            tl.store(ROUT + row * stride_r + cols, x, mask=mask)
        xf = x.to(tl.float32)
        var = tl.sum(xf * xf, axis=0) / n
        h = (xf * tl.rsqrt(var + eps)).to(OUT.dtype.element_ty)
        w = tl.load(W + cols, mask=mask, other=0.0)
        tl.store(OUT + row * stride_o + cols, (w.to(tl.float32) * h.to(tl.float32)), mask=mask)

    @triton.jit
    def _silu_mul(  # type: ignore[no-untyped-def]
        X, OUT, stride_x, stride_o, n, BLOCK: tl.constexpr,
    ):  # fmt: skip
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n
        g = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(X + row * stride_x + n + cols, mask=mask, other=0.0).to(tl.float32)
        silu = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
        tl.store(OUT + row * stride_o + cols, silu * u, mask=mask)

    @triton.jit
    def _rope_store(  # type: ignore[no-untyped-def]
        QKV, COS, SIN, QOUT, KC, VC, SLOTS, KOUT, VOUT,
        stride_t, stride_c, stride_kh, heads, kv_heads,
        HALF: tl.constexpr, HEADS_PAD: tl.constexpr, KV_PAD: tl.constexpr,
        WANT_KV: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        dim = 2 * HALF
        d = tl.arange(0, HALF)
        c = tl.load(COS + t * stride_c + d).to(tl.float32)[None, :]
        s = tl.load(SIN + t * stride_c + d).to(tl.float32)[None, :]
        h = tl.arange(0, HEADS_PAD)
        hmask = (h < heads)[:, None]
        src = QKV + t * stride_t + h[:, None] * dim + d[None, :]
        x1 = tl.load(src, mask=hmask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=hmask, other=0.0).to(tl.float32)
        dst = QOUT + (t * heads + h[:, None]) * dim + d[None, :]
        tl.store(dst, x1 * c - x2 * s, mask=hmask)
        tl.store(dst + HALF, x2 * c + x1 * s, mask=hmask)
        # keys: rotate, store at the slot in every KV head's cache plane; values: copy.
        g = tl.arange(0, KV_PAD)
        gmask = (g < kv_heads)[:, None]
        slot = tl.load(SLOTS + t)
        ksrc = QKV + t * stride_t + (heads + g[:, None]) * dim + d[None, :]
        k1 = tl.load(ksrc, mask=gmask, other=0.0).to(tl.float32)
        k2 = tl.load(ksrc + HALF, mask=gmask, other=0.0).to(tl.float32)
        r1 = k1 * c - k2 * s
        r2 = k2 * c + k1 * s
        cdst = g[:, None] * stride_kh + slot * dim + d[None, :]
        tl.store(KC + cdst, r1, mask=gmask)
        tl.store(KC + cdst + HALF, r2, mask=gmask)
        vsrc = ksrc + kv_heads * dim
        v1 = tl.load(vsrc, mask=gmask, other=0.0)
        v2 = tl.load(vsrc + HALF, mask=gmask, other=0.0)
        tl.store(VC + cdst, v1, mask=gmask)
        tl.store(VC + cdst + HALF, v2, mask=gmask)
        if WANT_KV:
            odst = (t * kv_heads + g[:, None]) * dim + d[None, :]
            tl.store(KOUT + odst, r1, mask=gmask)
            tl.store(KOUT + odst + HALF, r2, mask=gmask)
            tl.store(VOUT + odst, v1, mask=gmask)
            tl.store(VOUT + odst + HALF, v2, mask=gmask)

    return {
        "rmsnorm": _rmsnorm,
        "silu_mul": _silu_mul,
        "rope_store": _rope_store,
        "triton": triton,
    }


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """RMSNorm of `x` `[T, n]`; with `residual`, normalises `x + residual` and stores that sum
    into `residual` (in place), as the next layer's residual stream."""
    k = _kernels()
    rows, n = x.shape
    out = torch.empty_like(x)
    res = residual if residual is not None else x
    k["rmsnorm"][(rows,)](
        x, res, weight, out, res, x.stride(0), res.stride(0), out.stride(0), n, eps,
        HAS_RES=residual is not None, BLOCK=k["triton"].next_power_of_2(n),
    )  # fmt: skip
    return out


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[:, :n]) * x[:, n:] for `x` `[T, 2n]` (the fused gate/up projection's output)."""
    k = _kernels()
    rows, n = x.shape[0], x.shape[1] // 2
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    block = 1024
    k["silu_mul"][(rows, -(-n // block))](x, out, x.stride(0), out.stride(0), n, BLOCK=block)
    return out


def rope_and_store(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    kv_cache: tuple[torch.Tensor, torch.Tensor],
    slots: torch.Tensor,
    num_heads: int,
    want_kv: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the fused projection `qkv` `[T, H + 2 * kv_heads, d]`: RoPE on q and k, the
    rotated keys and the values written to the paged cache at `slots` (one kernel). Returns
    q `[T, H, d]` and, when `want_kv` (prefill chunks attend to them directly), contiguous k
    and v; otherwise empty tensors in their place."""
    k = _kernels()
    tokens, total, dim = qkv.shape
    kv_heads = (total - num_heads) // 2
    k_cache, v_cache = kv_cache
    assert qkv.stride(2) == 1 and qkv.stride(1) == dim and cos.stride(1) == 1
    q = torch.empty(tokens, num_heads, dim, dtype=qkv.dtype, device=qkv.device)
    shape = (tokens, kv_heads, dim) if want_kv else (0,)
    k_out = torch.empty(shape, dtype=qkv.dtype, device=qkv.device)
    v_out = torch.empty(shape, dtype=qkv.dtype, device=qkv.device)
    k["rope_store"][(tokens,)](
        qkv, cos, sin, q, k_cache, v_cache, slots, k_out, v_out,
        qkv.stride(0), cos.stride(0), k_cache.stride(0), num_heads, kv_heads,
        HALF=dim // 2, HEADS_PAD=k["triton"].next_power_of_2(num_heads),
        KV_PAD=k["triton"].next_power_of_2(kv_heads), WANT_KV=want_kv,
    )  # fmt: skip
    return q, k_out, v_out
