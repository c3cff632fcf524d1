"""Request traces for replay: deploylab's JSONL schema and importers for public trace layouts.

Formats (see docs/loadtest.md):
- deploylab JSONL: one object per line with `timestamp` (seconds), optional `session` and
  `model`, `input_tokens` or `input_text`, optional `output_tokens` or `output_text`, optional
  `hash_ids` (shared prefix blocks).
- Azure LLM inference trace CSV (2023 and 2024): `TIMESTAMP,ContextTokens,GeneratedTokens`,
  TIMESTAMP a date-time.
- BurstGPT CSV: `Timestamp` (seconds), `Model`, `Request tokens`, `Response tokens`,
  `Total tokens`, `Log Type` (and optionally `Session ID`); rows with 0 response tokens are
  failed requests and are skipped.
- Mooncake JSONL: `timestamp` (milliseconds), `input_length`, `output_length`, `hash_ids`
  (one id per block of `block_size` tokens; equal ids mean a shared prefix).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deploylab.errors import ConfigError

TraceFormat = Literal["deploylab", "azure", "burstgpt", "mooncake"]


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One recorded request; `timestamp_s` is relative to the first request of the trace."""

    timestamp_s: float
    input_tokens: int | None
    input_text: str | None = None
    output_tokens: int | None = None
    output_text: str | None = None
    session: str | None = None
    model: str | None = None
    hash_ids: tuple[int, ...] | None = None
    labels: dict[str, str] = field(default_factory=dict)


class TraceLine(BaseModel):
    """One line of a deploylab JSONL trace."""

    model_config = ConfigDict(extra="forbid")

    timestamp: float = Field(description="seconds; any origin (the first request becomes 0)")
    session: str | int | None = None
    model: str | None = None
    input_tokens: int | None = Field(default=None, ge=1)
    input_text: str | None = Field(default=None, min_length=1)
    output_tokens: int | None = Field(default=None, ge=1)
    output_text: str | None = None
    hash_ids: list[int] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TraceLine:
        if (self.input_tokens is None) == (self.input_text is None):
            raise ValueError("give exactly one of input_tokens and input_text")
        if self.output_tokens is not None and self.output_text is not None:
            raise ValueError("give at most one of output_tokens and output_text")
        return self


def _bad(path: Path, line: int, message: str) -> ConfigError:
    return ConfigError(f"{path}:{line}: {message}")


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _bad(path, number, f"not valid JSON ({exc.msg}).") from exc
            if not isinstance(obj, dict):
                raise _bad(path, number, "each line must be a JSON object.")
            yield number, obj


def _read_deploylab(path: Path) -> Iterator[TraceEntry]:
    for number, obj in _json_lines(path):
        try:
            rec = TraceLine.model_validate(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise _bad(path, number, f"{where}: {msg} (deploylab trace schema).") from exc
        yield TraceEntry(
            timestamp_s=rec.timestamp,
            input_tokens=rec.input_tokens,
            input_text=rec.input_text,
            output_tokens=rec.output_tokens,
            output_text=rec.output_text,
            session=None if rec.session is None else str(rec.session),
            model=rec.model,
            hash_ids=tuple(rec.hash_ids) if rec.hash_ids else None,
        )


def _read_mooncake(path: Path) -> Iterator[TraceEntry]:
    for number, obj in _json_lines(path):
        try:
            ts = float(obj["timestamp"]) / 1000.0
            n_in = int(obj["input_length"])
            n_out = int(obj["output_length"])
            hashes = tuple(int(h) for h in obj.get("hash_ids") or ())
        except (KeyError, TypeError, ValueError) as exc:
            raise _bad(
                path,
                number,
                "expected Mooncake fields timestamp (ms), input_length, output_length, hash_ids.",
            ) from exc
        if n_in < 1 or n_out < 1 or not math.isfinite(ts):
            raise _bad(path, number, "input_length and output_length must be at least 1.")
        session = obj.get("session_id")
        yield TraceEntry(
            timestamp_s=ts,
            input_tokens=n_in,
            output_tokens=n_out,
            hash_ids=hashes or None,
            session=None if session is None else str(session),
        )


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise _bad(path, 1, f"CSV header lacks column(s) {', '.join(missing)}; got {header}.")
        reader.fieldnames = header
        for row in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}


def _int(path: Path, line: int, row: dict[str, str], column: str) -> int:
    try:
        return int(float(row[column]))
    except (KeyError, ValueError) as exc:
        raise _bad(
            path, line, f"column '{column}' must be a number, got {row.get(column)!r}."
        ) from exc


def _read_azure(path: Path) -> Iterator[TraceEntry]:
    for line, row in _csv_rows(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens")):
        try:
            ts = datetime.fromisoformat(row["TIMESTAMP"]).timestamp()
        except ValueError as exc:
            raise _bad(path, line, f"TIMESTAMP {row['TIMESTAMP']!r} is not a date-time.") from exc
        n_in = _int(path, line, row, "ContextTokens")
        n_out = _int(path, line, row, "GeneratedTokens")
        yield TraceEntry(timestamp_s=ts, input_tokens=max(n_in, 1), output_tokens=max(n_out, 1))


def _read_burstgpt(path: Path) -> Iterator[TraceEntry]:
    columns = ("Timestamp", "Model", "Request tokens", "Response tokens")
    for line, row in _csv_rows(path, columns):
        try:
            ts = float(row["Timestamp"])
        except ValueError as exc:
            raise _bad(path, line, f"Timestamp {row['Timestamp']!r} is not a number.") from exc
        n_in = _int(path, line, row, "Request tokens")
        n_out = _int(path, line, row, "Response tokens")
        if n_out <= 0:  # BurstGPT marks failed requests with 0 response tokens
            continue
        labels = {"trace_model": row["Model"]}
        if row.get("Log Type"):
            labels["log_type"] = row["Log Type"]
        session = row.get("Session ID") or None
        yield TraceEntry(
            timestamp_s=ts,
            input_tokens=max(n_in, 1),
            output_tokens=n_out,
            session=session,
            labels=labels,
        )


_READERS = {
    "deploylab": _read_deploylab,
    "azure": _read_azure,
    "burstgpt": _read_burstgpt,
    "mooncake": _read_mooncake,
}


def detect_format(path: Path) -> TraceFormat:
    """Guess a trace's format from its first line."""
    try:
        with path.open(encoding="utf-8") as handle:
            first = next((ln for ln in handle if ln.strip()), "")
    except FileNotFoundError as exc:
        raise ConfigError(f"trace file {path} does not exist; check --trace.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read trace file {path}: {exc}") from exc
    if "ContextTokens" in first and "GeneratedTokens" in first:
        return "azure"
    if "Request tokens" in first and "Response tokens" in first:
        return "burstgpt"
    if first.lstrip().startswith("{"):
        return "mooncake" if '"input_length"' in first else "deploylab"
    raise _bad(
        path,
        1,
        "unknown trace format: expected deploylab or Mooncake JSONL, or an Azure or BurstGPT "
        "CSV header. Set `format:` in the scenario to force one.",
    )


def read_trace(
    path: Path, fmt: str = "auto", max_entries: int | None = None
) -> tuple[list[TraceEntry], TraceFormat]:
    """Read a trace, sorted by time with the first request at 0 s."""
    resolved: TraceFormat = detect_format(path) if fmt == "auto" else fmt  # type: ignore[assignment]
    entries: list[TraceEntry] = []
    try:
        for entry in _READERS[resolved](path):
            entries.append(entry)
            if max_entries is not None and len(entries) >= max_entries:
                break
    except FileNotFoundError as exc:
        raise ConfigError(f"trace file {path} does not exist; check --trace.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"trace file {path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise ConfigError(f"{path}: malformed CSV: {exc}") from exc
    if not entries:
        raise ConfigError(f"trace file {path} holds no requests.")
    entries.sort(key=lambda e: e.timestamp_s)
    origin = entries[0].timestamp_s
    shifted = [replace(e, timestamp_s=e.timestamp_s - origin) for e in entries]
    return shifted, resolved
