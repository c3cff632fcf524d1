"""Schemathesis hooks for fuzzing `deploylab serve` against its own /openapi.json.

Used by tests/server/test_fuzz.py and by the documented command in docs/server.md
(`SCHEMATHESIS_HOOKS=fuzz_hooks` with tests/server on PYTHONPATH):
- generated `max_tokens` are capped (DEPLOYLAB_FUZZ_MAX_TOKENS, default 2) so a case costs
  milliseconds on a CPU, not a whole context of decoding;
- the check `server_still_serves` asserts, after every case, that /health is 200 and that a
  normal completion is answered (no engine death, no wedged loop).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import httpx
import schemathesis

MAX_TOKENS = int(os.environ.get("DEPLOYLAB_FUZZ_MAX_TOKENS", "2"))


def cap_tokens(body: Any) -> Any:
    """A copy of a generated body whose token budget is at most MAX_TOKENS."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    keys = ("max_tokens", "max_completion_tokens")
    for key in keys:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_TOKENS:
            body[key] = MAX_TOKENS
    if all(body.get(k) is None for k in keys):  # chat would decode to the end of the context
        body["max_tokens"] = MAX_TOKENS
    return body


@schemathesis.hook
def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    return cap_tokens(body)


def assert_still_serves(base_url: str, generate: bool = True) -> None:
    """Raise AssertionError unless the server is healthy and (with `generate`) answers a
    normal completion."""
    health = httpx.get(f"{base_url}/health", timeout=60)
    assert health.status_code == 200, f"/health answered {health.status_code}: {health.text}"
    if not generate:
        return
    r = httpx.post(
        f"{base_url}/v1/completions", json={"prompt": "Hello", "max_tokens": 1}, timeout=60
    )
    assert r.status_code == 200, f"a normal request got {r.status_code}: {r.text}"


@schemathesis.check
def server_still_serves(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """After the case: the engine is alive and a normal request is answered."""
    url = urlsplit(str(response.request.url))
    assert_still_serves(f"{url.scheme}://{url.netloc}")
    return None
