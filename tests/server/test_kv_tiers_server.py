"""`deploylab serve --kv-offload-gib/--kv-offload-dir` with a tiny device cache: returning
conversations are served from the KV tiers with the plain server's answers (official openai
client), the tier metrics are on /metrics, and bad tier flags exit 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from tests.server.conftest import EXACT, MODEL, start_server
from tests.server.test_errors_metrics import metrics

BLOCK_GIB = 737280 / 1024**3  # one KV block of SmolLM2-135M (float32, 16 tokens)
TOPICS = ["lighthouses", "steam engines", "the markets of Marrakesh"]
FILLER = "Please keep every answer short, plain and friendly, and use simple words. " * 4


def converse(url: str) -> list[str]:
    """Three conversations, a turn of each in turn, two rounds (the prefix of a returning
    conversation has been pushed out of the small device cache by the other two)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    chats: list[list[Any]] = [
        [{"role": "user", "content": f"Tell me three short facts about {t}. " + FILLER}]
        for t in TOPICS
    ]
    answers = []
    for _ in range(2):
        for chat in chats:
            r = client.chat.completions.create(
                model=MODEL, messages=chat, max_tokens=8, temperature=0
            )
            text = r.choices[0].message.content or ""
            answers.append(text)
            chat += [{"role": "assistant", "content": text}, {"role": "user", "content": "More?"}]
    return answers


def test_tiered_server_answers_like_the_plain_one(server: Any, tmp_path: Path) -> None:
    tiered = start_server(
        tmp_path,
        "--kv-cache-gib", str(13 * BLOCK_GIB),
        "--kv-offload-gib", str(64 * BLOCK_GIB),
        "--kv-offload-dir", str(tmp_path / "kv"),
        "--kv-offload-disk-gib", str(64 * BLOCK_GIB),
        *EXACT,
    )  # fmt: skip
    try:
        got = converse(tiered.url)
        m = metrics(tiered.url)
    finally:
        tiered.stop()
    assert got == converse(server.url)
    assert m["vllm:external_prefix_cache_hits_total"] > 0
    assert (
        m["vllm:external_prefix_cache_queries_total"] >= m["vllm:external_prefix_cache_hits_total"]
    )
    assert m["deploylab:kv_offload_host_hits_total"] > 0
    assert m["vllm:kv_offload_total_bytes_total"] >= m["deploylab:kv_offload_host_load_bytes_total"]
    assert m["deploylab:kv_offload_host_load_bytes_total"] > 0
    assert 0 < m["vllm:kv_offload_cpu_cache_usage_perc"] <= 1
    assert m["deploylab:kv_offload_disk_errors_total"] == 0
    assert "vllm:external_prefix_cache_hits_total" not in metrics(server.url)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--kv-offload-dir", "/tmp/x"], "kv_offload_gib"),
        (["--kv-offload-gib", "-1"], "kv_offload_gib"),
        (["--kv-offload-gib", "1", "--kv-offload-policy", "never"], "kv_offload_policy"),
    ],
)
def test_bad_kv_tier_flags_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (a subprocess would import torch again only to print the error)."""
    from deploylab.cli import main

    code = main(["serve", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err
