"""Read YAML files into pydantic models with errors that name the file and line.

PyYAML's composed node tree keeps a start mark for every key and value; we walk it once to
build a map from key path (as pydantic reports error locations) to line number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from deploylab.errors import ConfigError

Path_ = tuple[str, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


class LineMap:
    """Line numbers (1-based) of every key path in one YAML document."""

    def __init__(self) -> None:
        self._lines: dict[Path_, int] = {}

    def add(self, path: Path_, line: int) -> None:
        self._lines.setdefault(path, line)

    def line_of(self, loc: tuple[Any, ...]) -> int | None:
        """Line of the deepest existing prefix of a pydantic error location.

        Location parts that are not keys of the document (the tag names pydantic inserts for
        tagged unions, e.g. `('workload', 'rag', 'corpus')`) are skipped.
        """
        path: Path_ = ()
        best = self._lines.get(())
        for part in loc:
            candidate = (*path, str(part))
            if candidate in self._lines:
                path = candidate
                best = self._lines[candidate]
        return best

    def display_path(self, loc: tuple[Any, ...]) -> str:
        """The error location as a dotted key path, without pydantic's union tag names."""
        path: Path_ = ()
        shown = []
        for i, part in enumerate(loc):
            candidate = (*path, str(part))
            if candidate in self._lines:
                path = candidate
                shown.append(str(part))
            elif i == len(loc) - 1:
                shown.append(str(part))
        return ".".join(shown) or "(top level)"


def _walk(node: yaml.Node, path: Path_, lines: LineMap) -> None:
    lines.add(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, str(key_node.value))
            lines.add(key_path, key_node.start_mark.line + 1)
            _walk(value_node, key_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, str(i)), lines)


def parse_yaml(text: str, source: str) -> tuple[Any, LineMap]:
    """Parse YAML text; return the data and its line map. Syntax errors name source:line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}: invalid YAML: {problem}. Fix the syntax at that line."
        ) from exc
    lines = LineMap()
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def format_validation_error(exc: ValidationError, lines: LineMap, source: str) -> str:
    """One line per problem: `source:line: field.path: what is wrong`."""
    out = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = lines.line_of(loc)
        where = f"{source}:{line}" if line is not None else source
        field = lines.display_path(loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field; check its spelling against docs/loadtest.md"
        out.append(f"  {where}: {field}: {msg}")
    return "\n".join(out)


def validate_yaml(model: type[ModelT], text: str, source: str, what: str) -> ModelT:
    """Parse YAML text and validate it as `model`; errors raise ConfigError with lines."""
    data, lines = parse_yaml(text, source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a {what} must be a YAML mapping of fields.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = format_validation_error(exc, lines, source)
        raise ConfigError(f"invalid {what} {source}:\n{detail}") from exc


def read_text_file(path: Path, what: str) -> str:
    """Read a UTF-8 text file or raise ConfigError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist; check the path.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
