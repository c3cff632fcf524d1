"""How the simulator counts prompt tokens: the documented approximation fits the load tester's
own text, and a configured tokenizer counts as a real server of that model does."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from deploylab.errors import UsageError
from deploylab.loadtest.library import load_scenario
from deploylab.loadtest.plan import make_generator
from deploylab.loadtest.sim import SimThread, parse_config
from deploylab.loadtest.sim.api import parse_body
from deploylab.loadtest.sim.server import SimServer
from deploylab.loadtest.sim.tokens import text_pieces
from deploylab.loadtest.text import approximate_words


def _messages(scenario: str, index: int) -> tuple[list[dict[str, str]], int]:
    gen = make_generator(load_scenario(scenario).scenario, approximate_words(), 0, None)
    item = gen.item(index)
    messages = [{"role": "user", "content": item.turns[0].content}]
    if item.system:
        messages.insert(0, {"role": "system", "content": item.system})
    return messages, item.system_tokens + item.turns[0].input_tokens


@pytest.mark.parametrize("scenario", ["chat-short", "rag"])
def test_the_approximation_counts_the_load_testers_text_as_planned(scenario: str) -> None:
    """Was 1.8x: 25,619 planned tokens counted as 45,862."""
    planned = counted = 0
    for index in range(6):
        messages, n = _messages(scenario, index)
        body = json.dumps({"messages": messages, "max_tokens": 4}).encode()
        template = 5 * (len(messages) + 1)  # <|role|> and newlines per message
        counted += len(parse_body(body, chat=True).tokens) - template
        planned += n
    assert planned <= counted <= planned * 1.01


def test_the_rule_is_the_documented_one() -> None:
    assert text_pieces("hello, world 42") == ["hello", ",", "world", "4", "2"]
    assert text_pieces("internationalization") == ["internati", "onalizati", "on"]


def _chat(url: str, messages: list[dict[str, str]]) -> dict[str, Any]:
    body = json.dumps({"messages": messages, "max_tokens": 2}).encode()
    request = urllib.request.Request(
        url + "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (loopback)
        return dict(json.loads(resp.read()))


def test_a_configured_tokenizer_counts_like_the_real_server(smol_tokenizer: Any) -> None:
    messages, planned = _messages("chat-short", 3)
    expected = smol_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if hasattr(expected, "keys"):
        expected = expected["input_ids"]
    config = parse_config("ttft: {base_ms: 1}\nitl: {base_ms: 1}", "sim.yaml")
    with SimThread(config, tokenizer=smol_tokenizer) as sim:
        usage = _chat(sim.url, messages)["usage"]
    assert usage["prompt_tokens"] == len(expected)
    assert planned < usage["prompt_tokens"] < planned + 40  # the words are exact, plus template


def test_an_unknown_tokenizer_is_a_clear_error() -> None:
    config = parse_config("tokenizer: no-such-model", "sim.yaml")
    with pytest.raises(UsageError, match="Unknown tokenizer 'no-such-model'"):
        SimServer(config)
