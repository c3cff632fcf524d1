"""Tiny ARMT fixtures: a 3-layer random Llama with non-zero memory weights."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deploylab.armt.config import ARMTConfig
from deploylab.armt.model import ARMTModel, random_armt
from deploylab.engine.models.config import LlamaConfig
from deploylab.engine.models.loader import init_random_model
from deploylab.engine.models.presets import get_preset

TINY: LlamaConfig = get_preset("tiny").with_updates(num_hidden_layers=3)
SEGMENT = 8
# W_mv random (not the paper's zero init), so every test exercises the memory path.
TINY_ARMT = ARMTConfig(
    segment_size=SEGMENT, num_mem_tokens=4, d_mem=8, w_mv_init="normal", init_std=0.1
)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the
    thread hand-offs cost up to 50x; restored after each test."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_armt() -> ARMTModel:
    return random_armt(TINY, TINY_ARMT, seed=0)


def tiny_hf_config(cfg: LlamaConfig) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": False,
    }


def write_hf_checkpoint(directory: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """A tiny Llama saved as an HF directory (config.json + model.safetensors); returns the
    saved weights."""
    from safetensors.torch import save_file

    model = init_random_model(TINY, seed=seed)
    weights = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(tiny_hf_config(TINY)))
    return weights


WORDS = "the cat sat on a mat and dog ran to big red house in sun".split()


def write_word_tokenizer(directory: Path) -> None:
    """A real (word-level) Hugging Face tokenizer whose ids fit the tiny vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(str(directory))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama")
    write_hf_checkpoint(directory)
    write_word_tokenizer(directory)
    return directory
