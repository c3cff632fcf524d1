"""oneDNN-prepacked linear layers on the CPU: same results as `F.linear`, parameters and
state dicts untouched, repacked when a weight changes, and undoable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deploylab.engine.cpu_linear import (
    is_prepacked,
    prepack_linears,
    prepack_supported,
    unpack_linears,
)

from .conftest import ModelParts

pytestmark = pytest.mark.skipif(
    not prepack_supported(torch.device("cpu"), torch.float32), reason="needs oneDNN"
)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32, bias=False))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_linear_matches_f_linear(dtype: torch.dtype) -> None:
    if not prepack_supported(torch.device("cpu"), dtype):
        pytest.skip(f"oneDNN {dtype} not supported here")
    model = _model().to(dtype)
    x = torch.randn(3, 5, 64, dtype=dtype)
    with torch.inference_mode():
        expected = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert prepack_linears(model) == 2
    assert is_prepacked(model[0]) and not is_prepacked(model[1])
    with torch.inference_mode():
        got = model(x)
    assert got.shape == expected.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    assert set(model.state_dict()) == set(before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_weight_changes_are_repacked() -> None:
    model = _model()
    prepack_linears(model)
    x = torch.randn(4, 64)
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # in place
        model[2].weight = nn.Parameter(torch.randn(32, 96))  # replaced
    with torch.inference_mode():
        got = model(x)
    expected = F.linear(torch.relu(F.linear(x, model[0].weight, model[0].bias)), model[2].weight)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_grad_mode_and_unpack_use_plain_linear() -> None:
    model = _model()
    prepack_linears(model)
    x = torch.randn(2, 64, requires_grad=True)
    model(x).sum().backward()  # autograd still works (falls back to F.linear)
    assert model[0].weight.grad is not None
    unpack_linears(model)
    assert not is_prepacked(model[0]) and "forward" not in model[0].__dict__


def test_cpu_engine_prepacks_the_model(tiny: ModelParts) -> None:
    engine = tiny.engine()
    linears = [m for m in engine.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(is_prepacked(m) for m in linears)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_comes_out_the_same_in_any_batch(threads: int) -> None:
    """One row alone and the same row among others are bit-identical (oneDNN's one-row
    product rounded differently at K = 1536), so a speculative verify row equals its decode
    row on the float path."""
    torch.manual_seed(0)
    layer = nn.Linear(1536, 576, bias=False)
    prepack_linears(layer)
    x = torch.randn(9, 1536)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            batch = layer(x)
            for m in (1, 2, 3, 5):
                assert torch.equal(layer(x[:m]), batch[:m]), m
            assert torch.equal(layer(x[0]), batch[0])  # a 1-d input too
    finally:
        torch.set_num_threads(before)


def test_quantized_layers_keep_their_forward(smol: ModelParts) -> None:
    """A model quantized before the engine packs it (a caller's int4 model) stays int4."""
    from deploylab.engine import EngineConfig
    from deploylab.engine.cpu_quant import apply_quantization, is_int4
    from deploylab.engine.models.loader import load_model

    model, _ = load_model(smol.path, torch.float32, torch.device("cpu"))
    config = EngineConfig(model=str(smol.path), quantization="int4")
    assert apply_quantization(config, model, torch.device("cpu"), own=True) == "int4"
    packed = prepack_linears(model)
    layer = model.model.layers[0].mlp.down_proj
    assert is_int4(layer) and not is_prepacked(layer) and not is_prepacked(model.lm_head)
    assert packed == 0  # every linear of the GGUF model is int4 or the int8 head
