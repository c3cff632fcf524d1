"""The target server: URL handling, reachability, the models it serves, and model mapping.

Before any load is sent we ask `/v1/models` what the target serves and fail fast, naming every
model the scenario needs that it lacks (or map scenario names with `--model-map FROM=TO`, where
FROM may be a glob such as `model-*`).
"""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from deploylab.errors import TargetUnreachableError, UsageError

_DIGITS = re.compile(r"(\d+)")
CHECK_TIMEOUT_S = 10.0  # default of --check-timeout: the /v1/models pre-check


def normalize_base_url(url: str) -> str:
    """`http://host:port` from a URL given with or without a trailing `/v1`."""
    parsed = urlparse(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(
            f"--url '{url}' is not an http(s) URL; give e.g. http://127.0.0.1:8000 "
            "(the server's base URL, with or without /v1)."
        )
    path = parsed.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parsed.scheme}://{parsed.netloc}{path}"


def endpoint_url(base_url: str, api: str) -> str:
    """The streaming endpoint for the API kind."""
    route = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    return base_url + route


class TargetSlowError(TargetUnreachableError):
    """The target took the connection (or may have) but did not answer in time: it is busy."""


def http_get(url: str, timeout_s: float = CHECK_TIMEOUT_S) -> tuple[int, bytes]:
    """GET a URL; returns (status, body). Raises TargetUnreachableError if nothing answers
    (refused, unresolvable) and TargetSlowError if the answer did not come in `timeout_s`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http only)
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read() or b""
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            connected = not isinstance(exc, urllib.error.URLError)  # timed out reading
            raise TargetSlowError(_slow_message(url, timeout_s, connected)) from exc
        raise TargetUnreachableError(
            f"Cannot reach the target at {url}: {reason}. Is the server running and is --url "
            "right? (Without --url, deploylab starts its own server.)"
        ) from exc


def _slow_message(url: str, timeout_s: float, connected: bool) -> str:
    what = (
        "accepted the connection but did not answer"
        if connected
        else "did not accept the connection"
    )
    return (
        f"The target at {url} {what} within {timeout_s:g} s: it is running but busy (a server "
        "that serves one request at a time, such as llama.cpp's, answers only after its "
        "current request), or the network drops packets. Wait longer with --check-timeout "
        "SECONDS, or skip the check with --check-timeout 0 (then name the model with --model)."
    )


def served_models(base_url: str, timeout_s: float = CHECK_TIMEOUT_S) -> list[str] | None:
    """Model ids from `/v1/models`; None when the target has no such route."""
    listing = models_listing(base_url, timeout_s)
    return None if listing is None else list(listing)


def models_listing(
    base_url: str, timeout_s: float = CHECK_TIMEOUT_S
) -> dict[str, int | None] | None:
    """Model id -> its advertised `max_model_len` (vLLM, SGLang, `deploylab serve`, the sim;
    None where not given), from `/v1/models`; None when the target has no such route, or when
    `timeout_s` is 0 (the check is skipped)."""
    if timeout_s <= 0:
        return None
    status, body = http_get(base_url + "/v1/models", timeout_s)
    if status in (404, 405):
        return None
    if status != 200:
        raise TargetUnreachableError(
            f"The target at {base_url} answered HTTP {status} to GET /v1/models: "
            f"{body[:300].decode(errors='replace')}"
        )
    try:
        data = json.loads(body)
        return {str(m["id"]): _context_length(m) for m in data["data"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise TargetUnreachableError(
            f"The target at {base_url} answered /v1/models with something that is not an "
            "OpenAI model list; is --url an OpenAI-compatible server?"
        ) from exc


def _context_length(model: dict[str, object]) -> int | None:
    value = model.get("max_model_len")
    return value if isinstance(value, int) and value > 0 else None


def parse_model_map(items: Sequence[str]) -> list[tuple[str, str]]:
    """`FROM=TO` pairs (FROM may be a glob); UsageError for anything else."""
    pairs = []
    for item in items:
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise UsageError(
                f"--model-map '{item}' is not FROM=TO; e.g. --model-map 'model-*=my-model' "
                "sends every scenario model named model-... to my-model."
            )
        pairs.append((source.strip(), target.strip()))
    return pairs


@dataclass(frozen=True)
class ModelPlan:
    """Which served model each request goes to."""

    default_model: str  # for requests that name no model
    mapping: dict[str, str]  # scenario model name -> served model name


def plan_models(
    needed: Sequence[str],
    needs_default: bool,
    served: list[str] | None,
    model: str | None,
    model_map: Sequence[tuple[str, str]],
) -> ModelPlan:
    """Resolve names, or raise UsageError naming what the target lacks."""
    mapping = {}
    for name in needed:
        target = name
        for pattern, mapped in model_map:
            if fnmatch.fnmatchcase(name, pattern):
                target = mapped
                break
        mapping[name] = target
    default = model or ""
    if needs_default and not default:
        if served is None:
            raise UsageError(
                "The target has no /v1/models route (or --check-timeout 0 skipped it), so "
                "deploylab cannot tell which model it serves: name it with --model."
            )
        if len(served) != 1:
            listed = ", ".join(served) or "none"
            raise UsageError(
                f"The target serves {len(served)} models ({listed}); choose one with --model."
            )
        default = served[0]
    if served is not None:
        wanted = ([default] if needs_default else []) + sorted(
            set(mapping.values()), key=natural_key
        )
        missing = [m for m in dict.fromkeys(wanted) if m not in served]
        if missing:
            shown = ", ".join(missing[:10]) + (
                f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            )
            example = f"{_glob_for(missing[0])}={served[0] if served else 'NAME'}"
            raise UsageError(
                f"The scenario needs model(s) the target does not serve: {shown}. The target "
                f"serves: {', '.join(served) or 'nothing'}. Serve them, or map scenario names "
                f"with --model-map FROM=TO (FROM may be a glob, e.g. '{example}')."
            )
    return ModelPlan(default, mapping)


def natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key putting numbers in numeric order: model-2 before model-10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in _DIGITS.split(name) if part]


def _glob_for(name: str) -> str:
    """A glob for a family of names like `name`: lora-3 -> lora-*."""
    stem = name.rstrip("0123456789")
    return stem + "*" if stem != name and stem else name
