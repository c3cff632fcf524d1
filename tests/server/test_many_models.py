"""`deploylab serve` with several models: routing by `model`, states in /v1/models, waking on
demand under a budget, the sleep-mode endpoints, metrics, and start-up errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from .conftest import MODEL, ServerProc, free_port, start_server

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """The real model twice, as `a` and `b`, with a budget that holds only one of them."""
    srv = start_server(
        tmp_path_factory.mktemp("many"),
        "--model", MODEL, "--served-model-name", "a", "--served-model-name", "b",
        "--kv-cache-gib", "0.02", "--memory-budget-gib", "0.7", "--enable-sleep-mode",
        "--max-num-seqs", "4",
    )  # fmt: skip
    yield srv
    srv.stop()


def _states(url: str) -> dict[str, str]:
    return {c["id"]: c["state"] for c in httpx.get(f"{url}/v1/models").json()["data"]}


def _ask(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        temperature=0.0,
        max_tokens=20,  # type: ignore[arg-type]
    )
    assert r.model == model
    return str(r.choices[0].message.content)


def test_requests_wake_the_named_model(two: ServerProc) -> None:
    client = openai.OpenAI(base_url=f"{two.url}/v1", api_key="x")
    assert _states(two.url) == {"a": "resident", "b": "sleeping"}
    assert _ask(client, "b") == ANSWER  # b woke, pushing a out
    assert _states(two.url) == {"a": "sleeping", "b": "resident"}
    assert _ask(client, "a") == ANSWER
    assert _states(two.url) == {"a": "resident", "b": "sleeping"}
    with pytest.raises(openai.NotFoundError, match="'a', 'b'"):
        _ask(client, "c")
    metrics = httpx.get(f"{two.url}/metrics").text
    assert 'deploylab:model_wakes_total{level="1",model_name="b"} 1.0' in metrics
    assert 'vllm:request_success_total{finished_reason="stop",model_name="a"} 1.0' in metrics
    assert 'vllm:request_success_total{finished_reason="stop",model_name="b"} 1.0' in metrics


def test_sleep_endpoints(two: ServerProc) -> None:
    url = two.url
    httpx.post(f"{url}/wake_up", params={"model": "a"}, timeout=120).raise_for_status()
    assert httpx.get(f"{url}/is_sleeping", params={"model": "a"}).json()["is_sleeping"] is False
    r = httpx.post(f"{url}/sleep", params={"level": 2, "model": "a"}, timeout=120)
    assert r.status_code == 200
    assert _states(url)["a"] == "unloaded"
    assert httpx.get(f"{url}/is_sleeping", params={"model": "a"}).json()["is_sleeping"] is True
    assert httpx.post(f"{url}/sleep", params={"level": 3}).status_code == 400
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x")
    assert _ask(client, "a") == ANSWER  # reloaded from the checkpoint: same answer
    assert "deploylab:model_wake_seconds_count" in httpx.get(f"{url}/metrics").text


def _serve_fails(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `deploylab serve` in this process for a flag that fails before anything loads."""
    from deploylab.cli import main

    code = main(["serve", "--port", str(free_port()), *args])
    return code, capsys.readouterr().err


def test_bad_model_path_fails_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _serve_fails(capsys, "--model", MODEL, "--model", str(tmp_path / "nope"))
    assert code == 1 and "Unknown model" in out and "nope" in out


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--sleep-level", "3", "--sleep-level must be 1 or 2"),
        ("--memory-budget-gib", "0", "--memory-budget-gib must be > 0"),
        ("--keep-alive", "-1", "--keep-alive must be > 0"),
        ("--max-resident-models", "0", "--max-resident-models must be >= 1"),
    ],
)
def test_residency_flags_are_checked(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _serve_fails(capsys, flag, value)
    assert code == 2 and message in out


def test_served_names_must_match_models(capsys: pytest.CaptureFixture[str]) -> None:
    names = ["--served-model-name", "a", "--served-model-name", "b"]
    code, out = _serve_fails(capsys, "--model", MODEL, "--model", MODEL, "--model", MODEL, *names)
    assert code == 2 and "one --served-model-name per --model" in out


def test_model_over_budget_fails_at_start(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n"
        "  - {name: small, random_weights: tiny, seed: 1, kv_cache_gib: 0.001}\n"
        "  - {name: big, random_weights: tiny, seed: 2, kv_cache_gib: 0.05}\n"
    )
    exe = Path(sys.executable).with_name("deploylab")
    done = subprocess.run(
        [str(exe), "serve", "--port", str(free_port()), "--models-file", str(models),
         "--memory-budget-gib", "0.01"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Model 'big' needs 0.05 GiB resident" in done.stderr
    assert "more than the memory budget of 0.01 GiB" in done.stderr


def test_models_file_errors_name_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models.yaml"
    models.write_text("models:\n  - {name: a, kv_cache_gb: 1}\n")
    code, out = _serve_fails(capsys, "--models-file", str(models))
    assert code == 2 and "models.0.kv_cache_gb" in out
