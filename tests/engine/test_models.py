"""Model layers and loaders against transformers: HF directories (sharded too), GGUF,
rope scaling, Qwen2 bias, Qwen3 q/k norm; the dense and paged paths agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from deploylab.engine import LLM, SamplingParams
from deploylab.engine.models.loader import init_random_model, load_model
from deploylab.engine.models.presets import get_preset

GREEDY_32 = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)


def save_hf_model(directory: Path, kind: str, **overrides: Any) -> Any:
    """Build a tiny random transformers model of `kind`, save it as safetensors, return it."""
    import transformers

    common: dict[str, Any] = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.15,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    common.update(overrides)
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    elif kind == "qwen3":
        config = transformers.Qwen3Config(head_dim=32, **common)
        model = transformers.Qwen3ForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # non-trivial norms and biases, so a missing one shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    model.save_pretrained(
        directory, **({"max_shard_size": "100KB"} if "shard" in str(directory) else {})
    )
    return model


def hf_greedy(model: Any, prompts: list[list[int]], n: int) -> list[list[int]]:
    """transformers greedy generation, one prompt at a time."""
    outs = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            y = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                do_sample=False,
                max_new_tokens=n,
                min_new_tokens=n,
                pad_token_id=0,
            )
        outs.append(y[0, len(ids) :].tolist())
    return outs


PROMPTS = [[5, 17, 42, 99, 3], list(range(10, 47)), [7], [250, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        (
            "llama",
            {
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 16,
                },
                "tie_word_embeddings": False,
            },
        ),
        ("qwen3", {"tie_word_embeddings": True}),
        ("qwen2", {"tie_word_embeddings": False}),
    ],
)
def test_greedy_matches_transformers(tmp_path: Path, kind: str, overrides: dict[str, Any]) -> None:
    hf = save_hf_model(tmp_path / kind, kind, **overrides)
    expected = hf_greedy(hf, PROMPTS, 32)
    llm = LLM(model=str(tmp_path / kind), device="cpu", dtype="float32", kv_cache_gib=0.01)
    got = [o.token_ids for o in llm.generate(PROMPTS, GREEDY_32)]
    assert got == expected


def test_sharded_checkpoint_loads_same_weights(tmp_path: Path) -> None:
    hf = save_hf_model(tmp_path / "shard", "llama")
    assert (tmp_path / "shard" / "model.safetensors.index.json").is_file()
    model, config = load_model(tmp_path / "shard", torch.float32, torch.device("cpu"))
    assert config.architecture == "LlamaForCausalLM"
    ours = dict(model.named_parameters())
    for name, p in hf.named_parameters():
        assert torch.equal(ours[name], p), name


def test_dense_forward_matches_transformers_logits(tmp_path: Path) -> None:
    hf = save_hf_model(tmp_path / "q3", "qwen3")
    model, _ = load_model(tmp_path / "q3", torch.float32, torch.device("cpu"))
    ids = torch.tensor([PROMPTS[1], PROMPTS[1][::-1]])
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        ours = model.compute_logits(model(ids, pos))
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_paged_prefill_matches_dense_forward() -> None:
    """The engine's paged path and the dense path (used by ARMT) give the same logits."""
    from deploylab.engine import LLMEngine
    from deploylab.engine.config import EngineConfig

    model = init_random_model(get_preset("tiny"), torch.float32, "cpu", seed=3)
    engine = LLMEngine(
        EngineConfig(device="cpu", dtype="float32", kv_cache_gib=0.01, block_size=4),
        model=model,
    )
    prompt = [3, 9, 27, 81, 243, 217, 139, 417, 1, 5, 8]
    engine.add_request("a", prompt, SamplingParams(temperature=0, max_tokens=1))
    sched = engine.scheduler.schedule()
    seqs, logits = engine.runner.execute(sched)
    with torch.no_grad():
        dense = model.compute_logits(model(torch.tensor([prompt]), torch.arange(len(prompt))[None]))
    assert logits is not None
    torch.testing.assert_close(logits[0], dense[0, -1], rtol=1e-5, atol=1e-5)


def test_random_preset_shapes() -> None:
    model = init_random_model(get_preset("tiny"), torch.bfloat16, "cpu")
    assert model.lm_head.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
    big = get_preset("llama-3.2-1b")
    assert (big.num_attention_heads, big.num_key_value_heads, big.head_dim) == (32, 8, 64)


def test_fused_projections_are_views_and_leave_the_state_dict_alone() -> None:
    """`fuse_linears` stacks weights into one tensor the layers' parameters view (CPU check of
    the structure the CUDA path uses); `fuse_for_cuda` declines on the CPU."""
    from deploylab.engine.models.llama import fuse_linears

    cfg = get_preset("tiny").with_updates(qkv_bias=True)
    model = init_random_model(cfg, torch.float32, torch.device("cpu"))
    attn = model.model.layers[0].self_attn
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, cfg.hidden_size)
    expected = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    weight, bias = fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
    assert bias is not None
    torch.testing.assert_close(torch.nn.functional.linear(x, weight, bias), expected)
    assert attn.q_proj.weight.data_ptr() == weight.data_ptr()
    assert set(model.state_dict()) == set(before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.fuse_for_cuda() is False
    assert not model.model.fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_table_gives_the_computed_cos_and_sin(dtype: torch.dtype) -> None:
    """The precomputed (cos, sin) table (CUDA fused path) returns exactly what the direct
    computation does, llama3 rope scaling included; a position past the table is an error."""
    from deploylab.engine.models.rope import RotaryEmbedding

    cfg = get_preset("llama-3.2-1b")
    rope = RotaryEmbedding(cfg)
    positions = torch.tensor([0, 1, 17, 999, 4095, 3])
    want = rope(positions, dtype)
    rope.use_table(4096, dtype)
    got = rope(positions, dtype)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    with pytest.raises(IndexError):
        rope(torch.tensor([4096]), dtype)
