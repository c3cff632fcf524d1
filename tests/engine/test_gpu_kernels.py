"""The fused CUDA small ops against their PyTorch definitions, and the fused model path
against the unfused one."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from deploylab.engine.models.llama import RMSNorm
from deploylab.engine.models.rope import apply_rotary

pytestmark = pytest.mark.gpu


def free_cuda() -> None:
    """Drop engines of earlier tests, so a new one finds its share of device memory."""
    gc.collect()
    torch.cuda.empty_cache()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("hidden", [576, 2048])
def test_rmsnorm_with_and_without_residual(hidden: int) -> None:
    from deploylab.engine import gpu_kernels

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, hidden, generator=gen).cuda().bfloat16()
    res = torch.randn(37, hidden, generator=gen).cuda().bfloat16()
    norm = RMSNorm(hidden, 1e-5).cuda().bfloat16()
    with torch.no_grad():
        norm.weight.normal_()
        assert rel_err(gpu_kernels.rmsnorm(x, norm.weight, 1e-5), norm(x)) < 1e-2
        stream = res.clone()
        out = gpu_kernels.rmsnorm(x, norm.weight, 1e-5, stream)
        torch.testing.assert_close(stream, x + res)
        assert rel_err(out, norm(x + res)) < 1e-2


def test_silu_mul() -> None:
    from deploylab.engine import gpu_kernels

    x = torch.randn(19, 2 * 3000, device="cuda", dtype=torch.bfloat16)
    ref = F.silu(x[:, :3000]) * x[:, 3000:]
    assert rel_err(gpu_kernels.silu_mul(x), ref) < 1e-2


@pytest.mark.parametrize("want_kv", [True, False])
def test_rope_and_store_from_the_fused_projection(want_kv: bool) -> None:
    """q rotated into a new contiguous tensor, rotated keys and the values stored at their
    cache slots (every KV head's plane), the projection buffer left as it was."""
    from deploylab.engine import gpu_kernels

    tokens, heads, kvh, d, blocks, bs = 23, 9, 3, 64, 8, 16
    qkv = torch.randn(tokens, heads + 2 * kvh, d, device="cuda", dtype=torch.bfloat16)
    before = qkv.clone()
    angles = torch.rand(tokens, d // 2, device="cuda") * 6
    cos = torch.cat([angles.cos()] * 2, -1).bfloat16()
    sin = torch.cat([angles.sin()] * 2, -1).bfloat16()
    k_cache = torch.zeros(kvh, blocks, bs, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.randperm(blocks * bs, device="cuda")[:tokens]
    q, k, v = gpu_kernels.rope_and_store(qkv, cos, sin, (k_cache, v_cache), slots, heads, want_kv)
    assert q.is_contiguous()
    assert rel_err(q, apply_rotary(qkv[:, :heads], cos, sin)) < 1e-2
    k_ref = apply_rotary(qkv[:, heads : heads + kvh], cos, sin)
    stored_k = k_cache.view(kvh, -1, d)[:, slots].transpose(0, 1)
    stored_v = v_cache.view(kvh, -1, d)[:, slots].transpose(0, 1)
    assert rel_err(stored_k, k_ref) < 1e-2
    assert torch.equal(stored_v, qkv[:, heads + kvh :])
    if want_kv:
        assert torch.equal(k, stored_k) and torch.equal(v, stored_v)
    else:
        assert k.numel() == 0 and v.numel() == 0
    assert torch.equal(qkv, before)


def test_fused_engine_matches_unfused_greedy() -> None:
    """Greedy tokens with fused projections and Triton ops equal those of the plain PyTorch
    ops (tiny random model, float16, CUDA); fusing leaves the state dict unchanged."""
    from deploylab.engine import LLM, SamplingParams
    from deploylab.engine.llm_engine import LLMEngine
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    cfg = get_preset("tiny")
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    prompts = [[5, 6, 7, 8, 9] * k for k in (1, 3, 7)]
    kwargs = dict(device="cuda", dtype="float16", gpu_memory_utilization=0.3)
    results = []
    for fused in (True, False):
        free_cuda()
        model = init_random_model(cfg, torch.float16, "cuda", seed=0)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        engine = LLMEngine(model=model, cuda_graphs=False, **kwargs)
        assert engine.model.model.fused
        for k, v in engine.model.state_dict().items():
            assert torch.equal(v, state[k]), k
        if not fused:
            engine.model.model.fused = False
            for layer in engine.model.model.layers:
                layer.self_attn.qkv_weight = None
                layer.mlp.gate_up_weight = None
        results.append([o.token_ids for o in LLM(llm_engine=engine).generate(prompts, params)])
        del engine, model  # before the next engine sizes its cache from free memory
    assert results[0] == results[1]


@pytest.mark.parametrize("prefill_kernel", [True, False])
def test_chunked_and_prefix_hit_prefill_match_on_cuda(prefill_kernel: bool) -> None:
    """Chunks after cached context and prefix-cache hits give the tokens of an unchunked,
    uncached run (tiny random model, float16, fused path), with the Triton prefill kernel
    and with SDPA (lower-right causal flash path)."""
    from deploylab.engine import LLM, SamplingParams
    from deploylab.engine.llm_engine import LLMEngine
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    base = list(range(40, 140))
    prompts = [base + [7] * k for k in (1, 9, 30)]
    results = []
    for budget, caching in ((4096, False), (24, False), (4096, True)):
        free_cuda()
        model = init_random_model(get_preset("tiny"), torch.float16, "cuda", seed=0)
        engine = LLMEngine(
            model=model, device="cuda", dtype="float16", gpu_memory_utilization=0.3,
            max_num_seqs=8, max_num_batched_tokens=budget, enable_prefix_caching=caching,
        )  # fmt: skip
        assert engine.runner.paged_prefill is not None
        if not prefill_kernel:
            engine.runner.paged_prefill = None
        llm = LLM(llm_engine=engine)
        if caching:
            llm.generate([base + [3]], params)  # warm the prefix cache
        results.append([o.token_ids for o in llm.generate(prompts, params)])
        del llm, engine, model  # before the next engine sizes its cache from free memory
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("variant", ["qwen3", "qwen2"])
def test_qk_norm_and_bias_models_match_the_sdpa_paths_on_cuda(variant: str) -> None:
    """Qwen3 (q/k norms: RoPE outside the fused kernel, keys written by `write_kv`) and
    Qwen2 (q/k/v biases in the fused projection) give the same greedy tokens with the Triton
    prefill/decode kernels as with the SDPA fallbacks, including a chunked prompt."""
    from dataclasses import replace

    from deploylab.engine import LLM, SamplingParams
    from deploylab.engine.llm_engine import LLMEngine
    from deploylab.engine.models.loader import init_random_model
    from deploylab.engine.models.presets import get_preset

    base = get_preset("tiny")
    if variant == "qwen3":
        cfg = replace(base, architecture="Qwen3ForCausalLM", qk_norm=True)
    else:
        cfg = replace(base, architecture="Qwen2ForCausalLM", qkv_bias=True)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompts = [list(range(30, 30 + n)) for n in (3, 40, 90)]
    results = []
    for kernels in (True, False):
        free_cuda()
        model = init_random_model(cfg, torch.float16, "cuda", seed=1)
        engine = LLMEngine(
            model=model, device="cuda", dtype="float16", gpu_memory_utilization=0.3,
            max_num_seqs=8, max_num_batched_tokens=64, cuda_graphs=False,
        )  # fmt: skip
        assert engine.runner.paged_prefill is not None
        if not kernels:
            engine.runner.paged_prefill = engine.runner.paged_decode = None
        results.append([o.token_ids for o in LLM(llm_engine=engine).generate(prompts, params)])
        del engine, model
    assert results[0] == results[1]
