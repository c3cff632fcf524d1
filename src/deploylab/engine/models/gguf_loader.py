"""Load a Llama-family GGUF file: metadata -> `LlamaConfig`, tensors dequantized by `gguf`.

llama.cpp's converter permutes the rows of the Llama q/k projections (it pairs rotary halves
as interleaved elements); we undo that so the weights match the Hugging Face layout that our
`rotate_half` RoPE expects. Qwen2/Qwen3 files are stored unpermuted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploylab.engine.models.config import MODEL_TYPE_TO_ARCH, LlamaConfig
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.models.loader import build_model
from deploylab.errors import ModelLoadError, UnsupportedArchitectureError

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name for a GGUF tensor name (None for tensors we do not load)."""
    m = _BLOCK_RE.match(gguf_name)
    if m:
        layer, kind, suffix = m.groups()
        target = _LAYER_NAMES.get(kind)
        return None if target is None else f"model.layers.{layer}.{target}.{suffix}"
    base, _, suffix = gguf_name.rpartition(".")
    target = _GLOBAL_NAMES.get(base)
    return None if target is None else f"{target}.{suffix}"


def unpermute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (per head: interleaved pairs -> two halves)."""
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return default
    value = f.contents()
    return value


def config_from_gguf(reader: Any, path: Path, tensor_names: set[str]) -> LlamaConfig:
    """Build the config from a GGUF file's metadata."""
    arch = str(_field(reader, "general.architecture", "<none>"))
    if arch not in ("llama", "qwen2", "qwen3", "mistral"):
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture '{arch}' is not supported by the deploylab engine "
            "(supported: llama, mistral, qwen2, qwen3)."
        )

    def get(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    vocab = get("vocab_size")
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        vocab = len(tokens.data) if tokens is not None else 0
    head_dim = get("attention.key_length") or get("rope.dimension_count") or hidden // heads
    scaling = None
    if get("rope.scaling.type") == "linear":
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    eos = [
        _field(reader, "tokenizer.ggml.eos_token_id"),
        _field(reader, "tokenizer.ggml.eot_token_id"),
    ]
    return LlamaConfig(
        architecture=MODEL_TYPE_TO_ARCH[arch],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(head_dim),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in tensor_names,
        qkv_bias="blk.0.attn_q.bias" in tensor_names,
        o_bias="blk.0.attn_output.bias" in tensor_names,
        qk_norm="blk.0.attn_q_norm.weight" in tensor_names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
    )


def _open(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError, IndexError, struct errors...
        raise ModelLoadError(
            f"Cannot read GGUF file {path}: {exc}. The file is corrupt or truncated."
        ) from exc
    size = path.stat().st_size
    for t in reader.tensors:
        if int(t.data_offset) + int(t.n_bytes) > size:
            raise ModelLoadError(
                f"GGUF file {path} is truncated: tensor {t.name} ends past the end of the file."
            )
    return reader


def load_gguf(
    path: Path, dtype: torch.dtype, device: torch.device
) -> tuple[LlamaForCausalLM, LlamaConfig]:
    """Load and dequantize a GGUF model file."""
    from gguf.quants import dequantize

    reader = _open(path)
    names = {t.name for t in reader.tensors}
    config = config_from_gguf(reader, path, names)
    permute = config.architecture in ("LlamaForCausalLM", "MistralForCausalLM")
    weights: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        try:
            array = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as exc:
            raise ModelLoadError(f"GGUF file {path}: cannot decode tensor {t.name}: {exc}") from exc
        tensor = torch.from_numpy(array.copy())
        if t.name == "rope_freqs.weight":
            config = config.with_updates(rope_freq_factors=tuple(tensor.tolist()))
            continue
        name = hf_name(t.name)
        if name is None:
            continue
        if permute and name.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = unpermute_rotary(tensor, config.num_attention_heads)
        elif permute and name.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = unpermute_rotary(tensor, config.num_key_value_heads)
        weights[name] = tensor
    model = build_model(config, weights, dtype, device, str(path))
    return model, config
