"""LoRA test helpers: real peft adapters on a transformers twin of the tiny model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from deploylab.engine.models.hf_interop import transformers_twin
from deploylab.engine.models.llama import LlamaForCausalLM

peft = pytest.importorskip("peft")


@dataclass(frozen=True)
class AdapterSpec:
    """How to make one random adapter."""

    name: str
    rank: int
    alpha: float
    targets: tuple[str, ...]
    rslora: bool = False
    seed: int = 0


SPECS = (
    AdapterSpec("a8", 8, 16, ("q_proj", "v_proj"), seed=1),
    AdapterSpec("b4", 4, 8, ("o_proj", "gate_proj", "down_proj"), seed=2),
    AdapterSpec(
        "c16",
        16,
        8,
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        rslora=True,
        seed=3,
    ),
)


def make_peft_model(model: LlamaForCausalLM, spec: AdapterSpec) -> Any:
    """A transformers twin of `model` with a random (non-zero) peft LoRA adapter."""
    twin = transformers_twin(model)
    config = peft.LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.targets),
        use_rslora=spec.rslora,
        init_lora_weights=False,  # random A and B: the adapter changes the outputs
        lora_dropout=0.0,
    )
    torch.manual_seed(spec.seed)
    pm = peft.get_peft_model(twin, config)
    with torch.no_grad():  # larger B than peft's default, so the adapter changes tokens
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return pm.eval()


def save_adapter(model: LlamaForCausalLM, spec: AdapterSpec, root: Path) -> tuple[Path, Any]:
    """Save a random adapter under `root/spec.name`; returns its path and the peft model."""
    pm = make_peft_model(model, spec)
    path = root / spec.name
    pm.save_pretrained(str(path))
    return path, pm


@torch.no_grad()
def greedy(hf: Any, prompt: list[int], n: int) -> list[int]:
    """`n` greedy tokens from a transformers (or peft) model, full forward each step."""
    ids = list(prompt)
    for _ in range(n):
        logits = hf(torch.tensor([ids])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[len(prompt) :]
