"""Property-based fuzzing of the running server against its own OpenAPI schema: no 5xx,
and the engine answers a normal request after every generated case (a few hundred cases per
generation endpoint here; docs/server.md has the >= 1,000-per-endpoint command)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .fuzz_hooks import assert_still_serves, cap_tokens

ENDPOINTS = [("POST", "/v1/completions"), ("POST", "/v1/chat/completions")]
CASES_PER_MODE = 100  # positive (schema-valid) and negative (schema-violating) each
GENERATE_EVERY = 10  # a normal completion after every 10th case (health after every one)


@pytest.fixture(scope="module")
def api(server: Any) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE,
                                  schemathesis.GenerationMode.NEGATIVE])  # fmt: skip
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_fuzz_no_server_errors(
    api: Any, server: Any, method: str, path: str, mode: schemathesis.GenerationMode
) -> None:
    operation = api[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=CASES_PER_MODE, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def run(case: Any) -> None:
        if case.body is not None:
            case.body = cap_tokens(case.body)
        response = case.call(base_url=server.url, timeout=120)
        case.validate_response(response, checks=[not_a_server_error])
        statuses.append(response.status_code)
        assert_still_serves(server.url, generate=len(statuses) % GENERATE_EVERY == 0)

    run()
    assert_still_serves(server.url)
    assert len(statuses) >= CASES_PER_MODE // 2, statuses
    expected = 200 if mode is schemathesis.GenerationMode.POSITIVE else 400
    assert expected in statuses, sorted(set(statuses))
