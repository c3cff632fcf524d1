"""The int4 CPU path (engine/cpu_quant.py): the GGUF's Q4 codes unchanged, greedy output against
the float path, the quantization setting and its errors (real model)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from deploylab.engine import EngineConfig, SamplingParams
from deploylab.engine.cpu_quant import (
    Int4Weight,
    Int8Weight,
    apply_quantization,
    int4_from_float,
    is_int4,
    q4_blocks,
    quantize_from_gguf,
    resolve_quantization,
)
from deploylab.errors import ConfigError

CPU = torch.device("cpu")


def test_q4_blocks_are_the_files_weights(smol) -> None:
    """Codes, scales and zeros read from the file give back gguf's dequantized tensor exactly."""
    tensor = next(t for t in GGUFReader(str(smol.path)).tensors if t.name == "blk.3.ffn_up.weight")
    ref = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    codes, scales, zeros = q4_blocks(tensor.tensor_type.name, tensor.data, *ref.shape)
    mine = (codes - 8.0) * np.repeat(scales, 32, 1) + np.repeat(zeros, 32, 1)
    assert codes.max() == 15 and codes.min() == 0
    np.testing.assert_array_equal(mine.astype(np.float32), ref)


def test_int4_weight_computes_its_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (48, 64), generator=gen)
    scales = torch.rand(48, 2, generator=gen) * 0.01
    zeros = torch.randn(48, 2, generator=gen) * 0.05
    weight = Int4Weight(codes, scales, zeros)
    sz = [t.bfloat16().float().repeat_interleave(32, 1) for t in (scales, zeros)]
    expected = (codes.float() - 8) * sz[0] + sz[1]
    x = torch.randn(3, 64, generator=gen)
    torch.testing.assert_close(weight.matmul(x), x @ expected.t(), atol=0.02, rtol=0.02)
    assert weight.matmul(x).dtype == torch.float32


def test_int8_head_computes_its_formula_with_rows_independent_of_the_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(96, 64, generator=gen)
    head = Int8Weight(w)
    assert head.codes.dtype == torch.int8 and int(head.codes.abs().max()) == 127
    x = torch.randn(5, 64, generator=gen)
    dequantized = head.codes.float() * head.scales.float()[:, None]
    torch.testing.assert_close(dequantized, w, atol=w.abs().max() / 127, rtol=0)
    got = head.matmul(x)
    torch.testing.assert_close(got, x @ w.t(), atol=0.1, rtol=0.02)
    alone = torch.cat([head.matmul(x[i : i + 1]) for i in range(5)])
    assert torch.equal(got, alone)


def test_int4_head_is_q4_1_groups_with_rows_independent_of_the_batch() -> None:
    """`int4_from_float` (the optional int4 LM head): 16 levels from each group's min to its
    max, so every weight is within half a step (plus bfloat16 rounding) of its level."""
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(96, 64, generator=gen)
    head = int4_from_float(w)
    groups = w.view(96, 2, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    err = (head.dequantized() - w).view(96, 2, 32).abs()
    assert bool((err <= step[..., None] * 0.5 + groups.abs().amax(-1)[..., None] / 64).all())
    x = torch.randn(5, 64, generator=gen)
    got = head.matmul(x)
    alone = torch.cat([head.matmul(x[i : i + 1]) for i in range(5)])
    assert torch.equal(got, alone)


def test_lm_head_quantization_setting(smol) -> None:
    """int4 swaps the real model's head for the int4 kernel; elsewhere it is refused."""
    from deploylab.engine.models.loader import load_model

    model, _ = load_model(smol.path, torch.float32, CPU)
    config = EngineConfig(model=str(smol.path), lm_head_quantization="int4")
    assert apply_quantization(config, model, CPU, own=True) == "int4"
    assert isinstance(model.lm_head.__dict__["_deploylab_int4"], Int4Weight)
    with pytest.raises(ConfigError, match="not one of int8, int4"):
        EngineConfig(lm_head_quantization="int2")
    with pytest.raises(ConfigError, match="applies to the CPU's int4 path"):
        smol.engine(lm_head_quantization="int4")  # a model passed in: quantization none


def test_int4_greedy_matches_float_path(smol) -> None:
    """The quantized layers hold the file's weights; greedy decode agrees with the float path
    over a short answer (measured: identical for 48 tokens on 3 of 4 prompts, docs/engine.md)."""
    from deploylab.engine.models.loader import load_model

    model, _ = load_model(smol.path, torch.float32, CPU)  # own copy: the shared one is packed
    assert quantize_from_gguf(model, smol.path) == 7 * model.config.num_hidden_layers
    assert is_int4(model.model.layers[0].self_attn.q_proj)
    assert not is_int4(model.lm_head)  # the Q8_0 head: int8 per row, by apply_quantization
    config = EngineConfig(model=str(smol.path), quantization="int4")
    model, _ = load_model(smol.path, torch.float32, CPU)
    assert apply_quantization(config, model, CPU, own=True) == "int4"
    assert is_int4(model.model.layers[0].mlp.down_proj) and is_int4(model.lm_head)
    # q/k/v and gate/up as one int4 call each: the same values as the layers' own calls
    attn, mlp = model.model.layers[2].self_attn, model.model.layers[2].mlp
    assert attn.qkv_fn is not None and mlp.gate_up_fn is not None
    x = torch.randn(5, model.config.hidden_size)
    with torch.inference_mode():
        fused = [*attn.qkv_fn(x), *mlp.gate_up_fn(x)]
        alone = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x), mlp.gate_proj(x), mlp.up_proj(x)]
    assert all(torch.equal(a, b) for a, b in zip(fused, alone, strict=True))
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    prompt = "The capital of France is"
    exact = smol.llm(quantization="none").generate(prompt, params)[0].token_ids
    llm = replace(smol, model=model).llm()
    quant = llm.generate(prompt, params)[0].token_ids
    assert quant == exact
    # the same arithmetic however the rows are batched: a prefix-cache hit (a 1-token
    # prefill) and a batch of 3 give the same seeded samples as the first request alone
    seeded = SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
    text = "Name a fruit that is yellow and long, and say why monkeys like it. " * 3
    ids = smol.tokenizer.encode(text)[:35]  # 2 cached blocks of 16, then a 3-token prefill
    alone = llm.generate(ids, seeded)[0]
    again = llm.generate([ids, "hi", "Water boils at"], seeded)[0]
    assert again.num_cached_tokens == 32 and again.token_ids == alone.token_ids


def test_quantization_choices_and_errors(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    assert resolve_quantization("auto", CPU, gguf) == "int4"
    assert resolve_quantization("auto", CPU, tmp_path) == "none"
    assert resolve_quantization("auto", torch.device("cuda"), gguf) == "none"
    assert resolve_quantization("none", CPU, gguf) == "none"
    with pytest.raises(ConfigError, match="not a GGUF file"):
        resolve_quantization("int4", CPU, tmp_path)
    with pytest.raises(ConfigError, match="CPU path"):
        resolve_quantization("int4", torch.device("cuda"), gguf)
    with pytest.raises(ConfigError, match="not one of auto, none, int4"):
        EngineConfig(quantization="int8")


def test_int4_needs_the_engine_to_load_the_gguf(smol) -> None:
    """A model passed in has no known file: auto stays float, int4 says why it cannot run."""
    assert smol.engine().quantization == "none"
    with pytest.raises(ConfigError, match="not a GGUF file"):
        smol.engine(quantization="int4")
