"""`deploylab serve --tensor-parallel-size 2` (gloo, CPU): it answers, and when a rank dies
the server fails fast and says why (an error response, then /health 503), not a hang."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import psutil
from tests.server.conftest import MODEL, start_server


def _tp_workers(pid: int) -> list[psutil.Process]:
    """The server's spawned rank processes (not multiprocessing's resource tracker)."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        cmd = " ".join(child.cmdline())
        if "multiprocessing.spawn" in cmd and "resource_tracker" not in cmd:
            out.append(child)
    return out


def _wait_dead(proc: psutil.Process) -> None:
    """Until the killed rank is gone or a zombie (the server reaps it later)."""
    for _ in range(300):
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    raise AssertionError("the killed rank is still running")


def test_tp2_server_answers_then_fails_fast_when_a_rank_dies(tmp_path: Path) -> None:
    """The default model (9 query / 3 KV heads, split 2 + 1 KV heads)."""
    srv = start_server(
        tmp_path, "--device", "cpu", "--tensor-parallel-size", "2", "--kv-cache-gib", "0.05"
    )
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 5}
    try:
        r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"]
        workers = _tp_workers(srv.proc.pid)
        assert len(workers) == 1
        workers[0].send_signal(signal.SIGKILL)
        _wait_dead(workers[0])
        r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 503, r.text
        assert "rank 1" in r.json()["error"]["message"]
        health = httpx.get(f"{srv.url}/health", timeout=10)
        assert health.status_code == 503
        assert "rank 1" in health.json()["detail"]
        assert "exited" in health.json()["detail"]
    finally:
        srv.stop()
