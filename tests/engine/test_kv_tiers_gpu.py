"""KV tiers on CUDA: the side-stream copies (gathered copies out, copies in layer by layer,
`LayerWaits`) return the same tokens as a device cache that holds everything, with async
scheduling and CUDA graphs on (their defaults there). Random weights, bf16."""

from __future__ import annotations

import gc
import random
from typing import Any

import pytest
import torch

from deploylab.engine import LLM, SamplingParams
from deploylab.engine.kv_cache import bytes_per_block
from deploylab.engine.kv_tiers.layerwise import LayerwiseKVTiers
from deploylab.engine.models.presets import get_preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GIB = 1024**3
PARAMS = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


def _llm(device_blocks: int, **tiers: Any) -> LLM:
    gc.collect()  # earlier engines give their device memory back first
    torch.cuda.empty_cache()
    return LLM(
        random_weights="tiny", device="cuda", dtype="bfloat16", max_num_seqs=4,
        max_model_len=224, gpu_memory_utilization=0.2, num_gpu_blocks_override=device_blocks,
        **tiers,
    )  # fmt: skip


def _converse(llm: LLM) -> list[list[int]]:
    """Four sessions taking turns; each turn is the last prompt + answer + new words, so a
    returning session's prefix was evicted by the others meanwhile."""
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 500) for _ in range(120)] for _ in range(4)]
    outs = []
    for _ in range(3):
        for i, prompt in enumerate(prompts):
            got = llm.generate([prompt], PARAMS)[0].token_ids
            outs.append(got)
            prompts[i] = prompt + got + [rng.randrange(3, 500) for _ in range(9)]
    return outs


@pytest.mark.parametrize("staging_blocks", [None, 3])
def test_layerwise_tiers_match_resident_on_cuda(
    staging_blocks: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    resident = _llm(400)
    want = _converse(resident)
    del resident
    per_block = bytes_per_block(get_preset("tiny"), 16, torch.bfloat16)
    if staging_blocks is not None:  # many gather groups: the two staging buffers alternate
        monkeypatch.setattr(LayerwiseKVTiers, "STAGING_BYTES", staging_blocks * per_block)
    llm = _llm(16, kv_offload_gib=200 * per_block / GIB)
    engine = llm.llm_engine
    assert isinstance(engine.kv_tiers, LayerwiseKVTiers)
    assert _converse(llm) == want
    stats = engine.stats()
    assert stats.external_prefix_cache_hits > 0
    engine.block_manager.check_invariants()
    del llm, engine
    torch.cuda.empty_cache()
