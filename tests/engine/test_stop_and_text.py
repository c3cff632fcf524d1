"""Stop strings, stop token ids, min_tokens, ignore_eos, max_tokens and streamed text."""

from __future__ import annotations

from deploylab.engine import SamplingParams
from deploylab.engine.stop import find_stop_string

from .conftest import ModelParts

PROMPT = "The weather today is"


def free_run(parts: ModelParts, n: int = 40) -> tuple[str, list[int]]:
    out = parts.llm().generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
    )[0]
    return out.text, out.token_ids


def test_find_stop_string_looks_only_at_new_text() -> None:
    assert find_stop_string("abcXYdef", 3, ["XY"]) is None  # ends before the new chars
    assert find_stop_string("abcXYdef", 4, ["XY", "de"]) == ("XY", 3)
    assert find_stop_string("abcdef", 2, ["ef", "cdef"]) == ("cdef", 2)


def test_stop_string_truncates_text(tiny_tok: ModelParts) -> None:
    text, _ = free_run(tiny_tok)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    at = text.find(stop)
    out = tiny_tok.llm().generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, stop=[stop])
    )[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == text[:at]
    kept = tiny_tok.llm().generate(
        PROMPT,
        SamplingParams(
            temperature=0,
            max_tokens=40,
            ignore_eos=True,
            stop=stop,
            include_stop_str_in_output=True,
        ),
    )[0]
    assert kept.text == text[: at + len(stop)]


def test_stop_token_id_ends_generation(tiny_tok: ModelParts) -> None:
    _, ids = free_run(tiny_tok, 20)
    stop_id = ids[5]
    first = ids.index(stop_id)
    out = tiny_tok.llm().generate(
        PROMPT, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_id])
    )[0]
    assert out.token_ids == ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_min_tokens_delays_a_stop_token(tiny_tok: ModelParts) -> None:
    _, ids = free_run(tiny_tok, 20)
    stop_id = ids[1]
    out = tiny_tok.llm().generate(
        PROMPT,
        SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[stop_id], min_tokens=6),
    )[0]
    assert len(out.token_ids) >= 6
    assert stop_id not in out.token_ids[:6]


def test_max_tokens_and_ignore_eos(smol: ModelParts) -> None:
    llm = smol.llm()
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    normal = llm.chat(chat, SamplingParams(temperature=0, max_tokens=30))[0]
    assert normal.finish_reason == "stop" and normal.token_ids[-1] == 2
    longer = llm.chat(chat, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    assert longer.finish_reason == "length" and len(longer.token_ids) == 12
    delayed = llm.chat(chat, SamplingParams(temperature=0, max_tokens=30, min_tokens=10))[0]
    assert len(delayed.token_ids) >= 10 and 2 not in delayed.token_ids[:10]


def test_streamed_deltas_never_leak_a_stop_string(tiny_tok: ModelParts) -> None:
    text, _ = free_run(tiny_tok)
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    engine = tiny_tok.engine()
    engine.add_request("s", PROMPT, SamplingParams(temperature=0, max_tokens=40, stop=[stop]))
    pieces = []
    while engine.has_unfinished_requests():
        for d in engine.step():
            pieces.append(d.new_text)
    assert "".join(pieces) == text[: text.find(stop)]
    assert all(stop not in p for p in pieces)


def test_max_model_len_ends_with_length(tiny: ModelParts) -> None:
    llm = tiny.llm(max_model_len=20)
    out = llm.generate([list(range(3, 18))], SamplingParams(max_tokens=None, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 5
