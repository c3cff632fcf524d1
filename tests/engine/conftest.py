"""Shared engine fixtures: the real SmolLM2 model loaded once, tiny random HF checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.smol import one_thread

from deploylab.engine import LLM, EngineConfig, LLMEngine
from deploylab.engine.models.llama import LlamaForCausalLM
from deploylab.engine.models.loader import init_random_model
from deploylab.engine.models.presets import get_preset


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


# Four chat prompts of different lengths for the real-model comparisons.
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue, and mention Rayleigh scattering.",
    "List three prime numbers.",
    "hi",
]


@dataclass
class ModelParts:
    """A loaded model and tokenizer that many engines can share."""

    path: Path
    model: LlamaForCausalLM
    tokenizer: Any

    def engine(self, **overrides: Any) -> LLMEngine:
        """A fresh engine (own KV cache and scheduler) around the shared weights."""
        settings: dict[str, Any] = {
            "model": str(self.path),
            "device": "cpu",
            "dtype": "float32",
            "kv_cache_gib": 0.1,
            "max_num_seqs": 16,
            "max_num_batched_tokens": 512,
        }
        settings.update(overrides)
        return LLMEngine(EngineConfig(**settings), model=self.model, tokenizer=self.tokenizer)

    def llm(self, **overrides: Any) -> LLM:
        """An `LLM` over a fresh engine."""
        return LLM(llm_engine=self.engine(**overrides))


@pytest.fixture(scope="session")
def smol() -> ModelParts:
    """The real SmolLM2-135M-Instruct GGUF, loaded once per session (float32, CPU)."""
    from tests.smol import smol_model, smol_path, smol_tokenizer

    return ModelParts(smol_path(), smol_model(), smol_tokenizer())


@pytest.fixture(scope="session")
def smol_chat_ids(smol: ModelParts) -> list[list[int]]:
    """CHAT_PROMPTS through the chat template, as token ids."""
    out = []
    for text in CHAT_PROMPTS:
        enc = smol.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True
        )
        out.append(list(enc["input_ids"] if hasattr(enc, "keys") else enc))
    return out


@pytest.fixture(scope="session")
def tiny() -> ModelParts:
    """A tiny random Llama (no tokenizer) for fast scheduler/engine behaviour tests."""
    model = init_random_model(get_preset("tiny"), torch.float32, "cpu", seed=0)
    return ModelParts(Path("tiny"), model, None)


@pytest.fixture(scope="session")
def tiny_tok(smol: ModelParts) -> ModelParts:
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer (text features)."""
    config = get_preset("tiny").with_updates(vocab_size=49152, eos_token_ids=(2,))
    model = init_random_model(config, torch.float32, "cpu", seed=1)
    return ModelParts(smol.path, model, smol.tokenizer)
