"""Trace replay: our JSONL schema and the Azure, BurstGPT and Mooncake layouts; malformed
traces name file and line; replayed prompts keep the trace's prefix sharing."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploylab.errors import ConfigError
from deploylab.loadtest.config import LoadConfig
from deploylab.loadtest.library import load_scenario
from deploylab.loadtest.plan import _schedule, make_generator
from deploylab.loadtest.text import approximate_words
from deploylab.loadtest.traces import detect_format, read_trace

AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.2293420,879,0
"""
BURSTGPT = """Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,GPT-4,1087,0,1087,Conversation log
47,ChatGPT,417,134,551,API log
"""
MOONCAKE = """{"timestamp": 0, "input_length": 1200, "output_length": 50, "hash_ids": [0, 1, 2]}
{"timestamp": 2500, "input_length": 1100, "output_length": 20, "hash_ids": [0, 1, 3]}
{"timestamp": 2500, "input_length": 300, "output_length": 10, "hash_ids": [4]}
"""
OURS = """{"timestamp": 100.5, "session": "u1", "input_tokens": 300, "output_tokens": 20}
{"timestamp": 101.0, "model": "m2", "input_text": "hello there", "output_text": "general kenobi"}
{"timestamp": 103.0, "session": "u1", "input_tokens": 450}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_azure_csv(tmp_path: Path) -> None:
    entries, fmt = read_trace(write(tmp_path, "a.csv", AZURE))
    assert fmt == "azure" and len(entries) == 3
    assert entries[0].timestamp_s == 0.0
    assert entries[1].timestamp_s == pytest.approx(4.314579, abs=1e-6)
    assert (entries[0].input_tokens, entries[0].output_tokens) == (374, 44)
    assert entries[2].output_tokens == 1  # a zero-token answer still asks for one token


def test_burstgpt_csv_skips_failed_requests(tmp_path: Path) -> None:
    entries, fmt = read_trace(write(tmp_path, "b.csv", BURSTGPT))
    assert fmt == "burstgpt" and len(entries) == 2
    assert [e.timestamp_s for e in entries] == [0.0, 42.0]
    assert entries[1].labels == {"trace_model": "ChatGPT", "log_type": "API log"}
    assert entries[1].model is None  # a trace's model names are labels, not routing


def test_mooncake_jsonl(tmp_path: Path) -> None:
    entries, fmt = read_trace(write(tmp_path, "m.jsonl", MOONCAKE))
    assert fmt == "mooncake"
    assert [e.timestamp_s for e in entries] == [0.0, 2.5, 2.5]
    assert entries[1].hash_ids == (0, 1, 3)


def test_deploylab_jsonl(tmp_path: Path) -> None:
    entries, fmt = read_trace(write(tmp_path, "t.jsonl", OURS))
    assert fmt == "deploylab"
    assert [e.timestamp_s for e in entries] == [0.0, 0.5, 2.5]
    assert entries[0].session == "u1" and entries[1].model == "m2"
    assert entries[1].input_text == "hello there"


@pytest.mark.parametrize(
    ("name", "text", "where", "what"),
    [
        ("t.jsonl", OURS + '{"timestamp": 1, "input_tokens": 0}\n', 4, "input_tokens"),
        ("t.jsonl", OURS + "{not json\n", 4, "not valid JSON"),
        ("t.jsonl", '{"timestamp": 1}\n', 1, "exactly one of input_tokens and input_text"),
        ("t.jsonl", '{"timestamp": 1, "input_tokens": 5, "colour": 1}\n', 1, "colour"),
        ("m.jsonl", MOONCAKE + '{"timestamp": 9, "input_length": "x"}\n', 4, "Mooncake"),
        ("a.csv", AZURE + "yesterday,5,5\n", 5, "not a date-time"),
        ("b.csv", BURSTGPT + "50,GPT-4,many,5,5,API log\n", 5, "Request tokens"),
        ("a.csv", "TIMESTAMP,ContextTokens\n1,2\n", 1, "unknown trace format"),
        ("x.txt", "hello\n", 1, "unknown trace format"),
    ],
)
def test_malformed_traces_name_file_and_line(
    tmp_path: Path, name: str, text: str, where: int, what: str
) -> None:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        read_trace(path)
    assert f"{path}:{where}:" in str(info.value)
    assert what in str(info.value)


def test_missing_and_empty_traces(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        detect_format(tmp_path / "none.jsonl")
    with pytest.raises(ConfigError, match="holds no requests"):
        read_trace(write(tmp_path, "e.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"))


def replay_gen(tmp_path: Path, name: str, text: str):  # noqa: ANN201
    entries, _ = read_trace(write(tmp_path, name, text))
    return make_generator(load_scenario("replay").scenario, approximate_words(), 0, entries)


def test_mooncake_blocks_become_shared_prefixes(tmp_path: Path) -> None:
    g = replay_gen(tmp_path, "m.jsonl", MOONCAKE)
    a, b, c = (g.item(i).turns[0] for i in range(3))
    assert (a.input_tokens, a.max_tokens) == (1200, 50)
    wa, wb, wc = a.content.split(" "), b.content.split(" "), c.content.split(" ")
    assert len(wa) == 1200 and len(wb) == 1100 and len(wc) == 300
    assert wa[:1024] == wb[:1024]  # blocks 0 and 1 shared (512 tokens each)
    assert wa[1024:1030] != wb[1024:1030]  # block 2 vs block 3
    assert wc[:50] != wa[:50]


def test_sessions_replay_as_growing_prefixes(tmp_path: Path) -> None:
    g = replay_gen(tmp_path, "t.jsonl", OURS)
    first, second, third = (g.item(i) for i in range(3))
    assert third.turns[0].content.startswith(first.turns[0].content)
    assert third.turns[0].max_tokens == 128  # the scenario's default_output_tokens
    assert second.turns[0].content == "hello there" and second.model == "m2"
    assert second.turns[0].max_tokens == 4  # len("general kenobi") / 4 chars per token
    assert g.model_names() == ["m2"] and g.needs_default_model()


def test_replay_schedule_uses_trace_times_or_a_chosen_rate(tmp_path: Path) -> None:
    g = replay_gen(tmp_path, "m.jsonl", MOONCAKE)
    assert _schedule(LoadConfig(), g) == [0.0, 2.5, 2.5]
    rescaled = _schedule(LoadConfig(rate=12.0), g)  # 3 requests over 2.5 s -> 1.2 /s
    assert rescaled == pytest.approx([0.0, 0.25, 0.25])
    assert _schedule(LoadConfig(requests=2), g) == [0.0, 2.5]


def test_bundled_sample_trace_replays() -> None:
    loaded = load_scenario("replay")
    assert loaded.scenario.workload.trace is not None
    entries, fmt = read_trace(loaded.folder / loaded.scenario.workload.trace)
    assert fmt == "deploylab" and len(entries) == 120
