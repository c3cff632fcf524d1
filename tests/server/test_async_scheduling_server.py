"""`deploylab serve --async-scheduling`: streamed chat completions (official openai client)
with a stop string and max_tokens equal the plain server's, chunk text included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
from tests.server.conftest import EXACT, MODEL, start_server

QUESTIONS = ["What is the capital of France?", "Name three colours.", "Count to five."]


def streamed(url: str, stop: list[str] | None) -> list[tuple[str, str | None]]:
    """Each question's streamed text and finish reason (greedy, 24 tokens at most)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    out = []
    for q in QUESTIONS:
        chunks = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": q}],
            max_tokens=24,
            temperature=0,
            stop=stop,
            stream=True,
        )
        text, reason = "", None
        for c in chunks:
            if c.choices:
                text += c.choices[0].delta.content or ""
                reason = c.choices[0].finish_reason or reason
        out.append((text, reason))
    return out


def test_async_scheduling_server_streams_like_the_plain_one(server: Any, tmp_path: Path) -> None:
    plain = streamed(server.url, None)
    stop = [plain[1][0][len(plain[1][0]) // 2 :][:3]]  # from the middle of an answer
    overlapped = start_server(tmp_path, "--async-scheduling", "--max-num-seqs", "32", *EXACT)
    try:
        got = [streamed(overlapped.url, None), streamed(overlapped.url, stop)]
    finally:
        overlapped.stop()
    assert got[0] == plain
    assert got[1] == streamed(server.url, stop)
    assert any(reason == "stop" and text for text, reason in got[1])
