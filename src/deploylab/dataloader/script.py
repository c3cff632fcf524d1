"""The contract of a pipeline script for `deploylab dataloader`.

A script defines `deploylab_pipeline()`, taking no arguments and returning a `Pipeline`
(or the tuple `(dataset, loader_kwargs, step)`):

    from deploylab.dataloader import Pipeline

    def deploylab_pipeline() -> Pipeline:
        dataset = ...                               # map-style dataset
        return Pipeline(dataset, {"batch_size": 32, "num_workers": 4}, train_step)

`step(batch)` runs one training step and must block until it is done (None: time the
loader alone).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploylab.dataloader.usercode import call_user
from deploylab.errors import UsageError

ENTRY_POINT = "deploylab_pipeline"

_EXAMPLE = (
    f"def {ENTRY_POINT}():\n"
    "    return Pipeline(dataset, {'batch_size': 32, 'num_workers': 4}, step)\n"
    "(see docs/dataloader.md)"
)


@dataclass
class Pipeline:
    """What a script hands to the doctor: the dataset, DataLoader settings, training step."""

    dataset: Any
    loader_kwargs: dict[str, Any] = field(default_factory=dict)
    step: Callable[[Any], Any] | None = None


def load_script(path: Path) -> Any:
    """Import the script as a module; errors while running it are the user's."""
    if not path.is_file():
        raise UsageError(f"No pipeline script at {path}: give the path of a .py file.")
    if path.suffix != ".py":
        raise UsageError(f"{path} is not a Python file (.py): give the pipeline script.")
    resolved = path.resolve()
    name = resolved.stem if resolved.stem not in sys.modules else f"_deploylab_{resolved.stem}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always have one
        raise UsageError(f"Python cannot load {path} as a module.")
    module = importlib.util.module_from_spec(spec)
    # Registered and on sys.path so DataLoader workers started with "spawn" can import it.
    sys.modules[name] = module
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    call_user(f"running {path.name}", lambda: spec.loader.exec_module(module))  # type: ignore[union-attr]
    return module


def load_pipeline(path: str | Path) -> Pipeline:
    """The `Pipeline` defined by the script at `path`."""
    path = Path(path)
    module = load_script(path)
    entry = getattr(module, ENTRY_POINT, None)
    if entry is None:
        raise UsageError(
            f"{path.name} defines no function `{ENTRY_POINT}`. Add one that returns the "
            f"dataset, DataLoader settings and training step:\n{_EXAMPLE}"
        )
    if not callable(entry):
        raise UsageError(f"`{ENTRY_POINT}` in {path.name} is not a function:\n{_EXAMPLE}")
    result = call_user(f"{ENTRY_POINT}() in {path.name}", entry)
    return as_pipeline(result, f"{ENTRY_POINT}() in {path.name}")


def as_pipeline(result: Any, where: str) -> Pipeline:
    """Accept a `Pipeline` or a `(dataset, loader_kwargs, step)` tuple."""
    if isinstance(result, Pipeline):
        pipeline = result
    elif isinstance(result, tuple) and len(result) in (2, 3):
        pipeline = Pipeline(*result)
    else:
        raise UsageError(
            f"{where} returned {type(result).__name__}; it must return a Pipeline or a "
            f"(dataset, loader_kwargs, step) tuple:\n{_EXAMPLE}"
        )
    if pipeline.loader_kwargs is None:
        pipeline.loader_kwargs = {}
    if not isinstance(pipeline.loader_kwargs, dict):
        raise UsageError(
            f"{where} returned loader_kwargs of type {type(pipeline.loader_kwargs).__name__}; "
            "give a dict of DataLoader keyword arguments, e.g. {'batch_size': 32}."
        )
    if pipeline.step is not None and not callable(pipeline.step):
        raise UsageError(f"{where} returned a step that is not callable: give a function or None.")
    return pipeline
