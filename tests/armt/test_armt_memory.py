"""Associative memory math: DPFP, read, the delta-rule write and the z update."""

from __future__ import annotations

import math

import torch

from deploylab.armt.memory import (
    dpfp,
    feature_map,
    memory_read,
    memory_read_add,
    memory_write,
)

EPS = 1e-5


def test_dpfp_matches_its_definition_on_a_small_vector() -> None:
    # r = [relu(x), relu(-x)] = [1, 0, 0, 2]; roll by 1 = [2, 1, 0, 0]; roll by 2 = [0, 2, 1, 0]
    x = torch.tensor([1.0, -2.0])
    assert torch.equal(dpfp(x, nu=1), torch.tensor([2.0, 0.0, 0.0, 0.0]))
    assert torch.equal(dpfp(x, nu=2), torch.tensor([2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
    y = torch.tensor([1.0, 3.0])  # r = [1, 3, 0, 0]; roll1 = [0, 1, 3, 0]
    assert torch.equal(dpfp(y, nu=1), torch.tensor([0.0, 3.0, 0.0, 0.0]))


def test_feature_map_width_sign_and_norm() -> None:
    x = torch.randn(5, 7, 8)
    phi = feature_map(x, nu=3, normalize=True)
    assert phi.shape == (5, 7, 2 * 3 * 8)
    assert phi.dtype == torch.float32
    assert bool((phi >= 0).all())
    torch.testing.assert_close(phi.norm(dim=-1), torch.ones(5, 7))
    raw = feature_map(x, nu=3, normalize=False)
    torch.testing.assert_close(raw / raw.norm(dim=-1, keepdim=True), phi)


def _block_input(start: int, d: int = 16) -> torch.Tensor:
    """Positive input supported on coordinates start, start+1: its DPFP features live on a
    set of positions no other block (4 or more coordinates away) touches."""
    x = torch.zeros(d)
    x[start] = 1.0
    x[start + 1] = 2.0
    return x


def test_read_after_write_of_orthogonal_keys_recovers_the_values() -> None:
    d_model = 6
    keys = torch.stack([feature_map(_block_input(s), 3, True) for s in (0, 5, 10)])
    assert float((keys @ keys.T - torch.eye(3)).abs().max()) < 1e-6  # orthonormal features
    values = torch.randn(3, d_model)
    w = torch.zeros(keys.shape[-1], d_model)
    z = torch.zeros(keys.shape[-1])
    w, z = memory_write(keys, values, torch.ones(3, 1), w, z, EPS)
    read = memory_read(keys, w, z, EPS)
    torch.testing.assert_close(read, values, rtol=1e-4, atol=1e-4)
    # one key at a time gives the same memory
    w2 = torch.zeros_like(w)
    z2 = torch.zeros_like(z)
    for i in range(3):
        w2, z2 = memory_write(keys[i : i + 1], values[i : i + 1], torch.ones(1, 1), w2, z2, EPS)
    torch.testing.assert_close(w2, w)
    torch.testing.assert_close(z2, z)


def test_beta_scales_a_fresh_write() -> None:
    k = feature_map(_block_input(0), 3, True)[None]
    v = torch.randn(1, 4)
    w, z = memory_write(
        k, v, torch.full((1, 1), 0.25), torch.zeros(k.shape[1], 4), torch.zeros(k.shape[1]), EPS
    )
    torch.testing.assert_close(memory_read(k, w, z, EPS), 0.25 * v, rtol=1e-4, atol=1e-5)


def test_rewriting_a_key_replaces_its_value_and_leaves_z_alone() -> None:
    k = feature_map(_block_input(3), 3, True)[None]
    v1, v2 = torch.randn(1, 5), torch.randn(1, 5)
    w, z = memory_write(
        k, v1, torch.ones(1, 1), torch.zeros(k.shape[1], 5), torch.zeros(k.shape[1]), EPS
    )
    w_same, z_same = memory_write(k, v1, torch.ones(1, 1), w, z, EPS)
    torch.testing.assert_close(w_same, w, rtol=0, atol=1e-4)  # v − v̄ ≈ 0: nothing to add
    w_new, z_new = memory_write(k, v2, torch.ones(1, 1), w, z, EPS)
    torch.testing.assert_close(memory_read(k, w_new, z_new, EPS), v2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z_new, z)  # γ = 1 − z·k/‖k‖² = 0: the key is already counted


def test_z_update_rule_gamma_clipped_to_unit_interval() -> None:
    e1 = torch.tensor([1.0, 0.0, 0.0])
    e2 = torch.tensor([0.0, 1.0, 0.0])
    k = ((e1 + e2) / math.sqrt(2))[None]
    v = torch.zeros(1, 2)
    w = torch.zeros(3, 2)
    # z·k = 1/√2, ‖k‖² = 1 -> γ = 1 − 1/√2
    _, z = memory_write(k, v, torch.ones(1, 1), w, e1.clone(), EPS)
    torch.testing.assert_close(z, e1 + (1 - 1 / math.sqrt(2)) * k[0])
    # z·k > ‖k‖² -> γ clipped to 0
    _, z = memory_write(e1[None], v, torch.ones(1, 1), w, 2 * e1, EPS)
    torch.testing.assert_close(z, 2 * e1)
    # z·k < 0 -> γ clipped to 1
    _, z = memory_write(e1[None], v, torch.ones(1, 1), w, -e1, EPS)
    torch.testing.assert_close(z, torch.zeros(3))
    # an all-zero key changes nothing and makes no NaN
    w2, z2 = memory_write(torch.zeros(1, 3), torch.ones(1, 2), torch.ones(1, 1), w, e1, EPS)
    assert torch.equal(w2, w) and torch.equal(z2, e1)


def test_fused_read_equals_the_plain_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 16, generator=g)
    q = feature_map(torch.randn(2, 3, 7, 4, generator=g), 3, True)
    w = torch.randn(2, 3, 24, 16, generator=g)
    z = torch.rand(2, 3, 24, generator=g)
    expected = x + memory_read(q, w, z, EPS)
    torch.testing.assert_close(memory_read_add(x, q, w, z, EPS), expected)
    # an empty memory reads exactly zero: the first segment's read is a no-op
    zero = memory_read_add(x, q, torch.zeros_like(w), torch.zeros_like(z), EPS)
    assert torch.equal(zero, x)
