"""`deploylab serve --speculative-config`: same greedy answers as the plain server through
the official openai client, vLLM's spec-decode counters on /metrics, bad configs exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.server.conftest import EXACT, MODEL, start_server
from tests.server.test_errors_metrics import metrics

# A fixed k: the adaptive policy (tested in tests/engine) picks k from measured step times,
# and on a loaded machine it can speculate so little that no draft token gets accepted.
NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 2, "adaptive": False}
CONTEXT = (
    "Context: The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built it."
)


def answer(url: str) -> str:
    client = openai.OpenAI(base_url=url + "/v1", api_key="none")
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": CONTEXT + "\nRepeat the context word for word."}],
        max_tokens=32,
        temperature=0,
    )
    return r.choices[0].message.content or ""


def test_speculative_server_answers_like_the_plain_one(server: Any, tmp_path: Path) -> None:
    spec = start_server(tmp_path, "--speculative-config", json.dumps(NGRAM), *EXACT)
    try:
        got = answer(spec.url)
        m = metrics(spec.url)
    finally:
        spec.stop()
    assert got == answer(server.url)
    assert m["vllm:spec_decode_num_drafts_total"] > 0
    assert (
        0
        < m["vllm:spec_decode_num_accepted_tokens_total"]
        <= (m["vllm:spec_decode_num_draft_tokens_total"])
    )
    assert "vllm:spec_decode_num_drafts_total" not in metrics(server.url)


@pytest.mark.parametrize(
    ("value", "needle"),
    [("{bad", "not valid JSON"), ('{"method": "eagle", "num_speculative_tokens": 2}', "eagle")],
)
def test_bad_speculative_config_exits_2(
    value: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (a subprocess would import torch again only to print the error); an
    unexpected exception would escape `main` and fail the test."""
    from deploylab.cli import main

    code = main(["serve", "--speculative-config", value])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--speculative-config" in err and needle in err
    assert "Traceback" not in err
