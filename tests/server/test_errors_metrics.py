"""Bad input, disconnects, admission control, SIGTERM and /metrics on a real server."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

MODEL = "smollm2-135m-instruct"
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"


def metrics(url: str) -> dict[str, float]:
    """Scrape /metrics into {name: value} (sample names, labels dropped, summed)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


class InFlight:
    """A long streaming request running in a thread while other requests are sent."""

    def __init__(self, url: str, max_tokens: int = 60) -> None:
        self.url = url
        self.max_tokens = max_tokens
        self.result: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        body = {"prompt": "Tell a long story:", "max_tokens": self.max_tokens,
                "ignore_eos": True, "temperature": 0}  # fmt: skip
        r = httpx.post(self.url + COMP, json=body, timeout=120)
        self.result = {"status": r.status_code, "body": r.json()}

    def __enter__(self) -> InFlight:
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(120)
        assert self.result["status"] == 200, self.result
        usage = self.result["body"]["usage"]
        assert usage["completion_tokens"] == self.max_tokens


BAD_REQUESTS = [
    # (path, raw body or json, status, param substring)
    (COMP, b"{not json", 400, None),
    (COMP, b"[1, 2]", 400, None),
    (COMP, {"model": MODEL, "prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    (COMP, {"model": MODEL, "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    (COMP, {"model": MODEL, "prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
    (COMP, {"model": MODEL, "prompt": "hi", "temperature": -1}, 400, "temperature"),
    (COMP, {"model": MODEL, "prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    (COMP, {"model": MODEL, "prompt": "", "max_tokens": 3}, 400, "prompt"),
    (COMP, {"model": "gpt-9", "prompt": "hi"}, 404, "model"),
    (COMP, {"model": MODEL, "prompt": "word " * 20000, "max_tokens": 4}, 400, "prompt"),
    (CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": "hello"}, 400, "messages"),
    (CHAT, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
    (COMP, b"x" * (5 * 1024 * 1024), 413, None),
]


def _post_bad(url: str, path: str, body: Any, status: int, param: str | None) -> None:
    """Send one bad request; it must get an OpenAI-style error naming the field."""
    if isinstance(body, bytes):
        headers = {"content-type": "application/json"}
        r = httpx.post(url + path, content=body, headers=headers, timeout=60)
    else:
        r = httpx.post(url + path, json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status and err["message"]
    if param is not None:
        assert err["param"] is not None and param in err["param"], err


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS)
def test_bad_input_gets_openai_error(
    server: Any, path: str, body: Any, status: int, param: str | None
) -> None:
    _post_bad(server.url, path, body, status, param)


def test_in_flight_request_survives_every_bad_input(server: Any) -> None:
    """Every bad request of BAD_REQUESTS while one long request is being generated: it still
    completes with all its tokens (one in-flight request for all, not one per case)."""
    with InFlight(server.url, max_tokens=120):
        for path, body, status, param in BAD_REQUESTS:
            _post_bad(server.url, path, body, status, param)


def test_metrics_parse_and_counters_move(server: Any) -> None:
    before = metrics(server.url)
    r = httpx.post(
        server.url + COMP,
        json={"prompt": "The sky is", "max_tokens": 5, "ignore_eos": True, "temperature": 0},
        timeout=60,
    )
    assert r.status_code == 200
    after = metrics(server.url)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:num_preemptions_total",
                 "deploylab:recomputed_tokens_total"):  # fmt: skip
        assert name in after
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 5
    assert after["vllm:prompt_tokens_total"] > before["vllm:prompt_tokens_total"]
    assert after["vllm:prefix_cache_queries_total"] > before["vllm:prefix_cache_queries_total"]
    assert after["vllm:e2e_request_latency_seconds_count"] == (
        before.get("vllm:e2e_request_latency_seconds_count", 0) + 1
    )
    assert after["vllm:time_to_first_token_seconds_count"] > 0


def test_prefix_cache_hits_counted(server: Any) -> None:
    prompt = "Shared system prompt for prefix caching. " * 8
    before = metrics(server.url)
    for _ in range(2):
        httpx.post(server.url + COMP, json={"prompt": prompt, "max_tokens": 1}, timeout=60)
    after = metrics(server.url)
    assert after["vllm:prefix_cache_hits_total"] > before["vllm:prefix_cache_hits_total"]


def test_disconnect_mid_stream_frees_blocks(server: Any) -> None:
    def idle() -> bool:
        m = metrics(server.url)
        return m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0

    deadline = time.monotonic() + 30
    while not idle() and time.monotonic() < deadline:
        time.sleep(0.1)
    base_usage = metrics(server.url)["vllm:kv_cache_usage_perc"]
    body = {"prompt": "Write an essay:", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + COMP, json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 6:
                running = metrics(server.url)
                assert running["vllm:num_requests_running"] == 1
                assert running["vllm:kv_cache_usage_perc"] > base_usage
                break
    # the client closed the connection: the engine must abort and free the blocks
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = metrics(server.url)
        if m["vllm:num_requests_running"] == 0 and m["vllm:kv_cache_usage_perc"] <= base_usage:
            break
        time.sleep(0.1)
    m = metrics(server.url)
    assert m["vllm:num_requests_running"] == 0
    assert m["vllm:kv_cache_usage_perc"] <= base_usage


def test_admission_control_then_sigterm_drain(server_factory: Any) -> None:
    srv = server_factory("--max-num-seqs", "1", "--max-waiting", "1", "--drain-seconds", "20")
    body = {"prompt": "Count:", "max_tokens": 40, "ignore_eos": True}
    results: list[int] = []

    def send() -> None:
        results.append(httpx.post(srv.url + COMP, json=body, timeout=120).status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(120)
    assert 429 in results and 200 in results
    r429 = httpx.post(srv.url + COMP, json=body, timeout=120)
    assert r429.status_code in (200, 429)

    # SIGTERM while a request is in flight: it finishes, then the process exits 0.
    inflight = InFlight(srv.url, max_tokens=30)
    with inflight:
        srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(60) == 0


def test_serve_unknown_model_exits_1_before_binding() -> None:
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("deploylab")
    r = subprocess.run(
        [str(exe), "serve", "--model", "no-such-model", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1
    assert "Unknown model 'no-such-model'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [str(exe), "serve", "--device", "tpu"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "--device" in r.stderr
