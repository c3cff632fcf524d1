"""Load YAML while remembering line numbers, and turn pydantic errors into file:line messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deploylab.errors import ConfigError

Loc = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)


def _to_python(node: yaml.Node, lines: dict[Loc, int], loc: Loc) -> Any:
    """Convert a composed YAML node to Python data, recording the 1-based line of every path."""
    lines.setdefault(loc, node.start_mark.line + 1)  # a mapping value keeps its key's line
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node))
            lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _to_python(value_node, lines, (*loc, key))
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, lines, (*loc, i)) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML text; return the data and a map from key path to line number."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}. Fix the syntax there.") from exc
    lines: dict[Loc, int] = {}
    if node is None:
        return {}, lines
    return _to_python(node, lines, ()), lines


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of the deepest prefix of `loc` that appears in the file."""
    for end in range(len(loc), -1, -1):
        line = lines.get(tuple(loc[:end]))
        if line is not None:
            return line
    return None


def validation_message(exc: ValidationError, lines: dict[Loc, int], source: str) -> str:
    """One line per pydantic error: `file:line: field.path: what is wrong`."""
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = _line_of(loc, lines)
        where = f"{source}:{line}" if line is not None else source
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see docs/sim.md for the schema)"
        parts.append(f"{where}: {field}: {msg}")
    return "\n".join(parts)


def validate_data(model: type[M], data: Any, lines: dict[Loc, int], source: str) -> M:
    """Validate parsed YAML data against a pydantic model, raising ConfigError with file:line."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a YAML mapping of fields, not {data!r}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid config {source}:\n{validation_message(exc, lines, source)}"
        ) from exc


def read_text(path: Path) -> str:
    """Read a config file, or raise ConfigError saying it is missing or unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config file {path} does not exist; pass an existing YAML file."
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
