"""Find and load scenarios: the built-in ones shipped with the package, or a user's file."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from deploylab.errors import UsageError
from deploylab.loadtest.scenario import Scenario
from deploylab.loadtest.yamlfile import read_text_file, validate_yaml

_PACKAGE = "deploylab.loadtest"
_FOLDER = "scenarios"


@dataclass(frozen=True)
class LoadedScenario:
    """A validated scenario and where it came from (relative paths resolve against `folder`)."""

    scenario: Scenario
    source: str  # "builtin:NAME" or the file path
    folder: Path
    slo_profile: str | None = None  # the SLO profile `scenario.slo` was taken from

    def with_slo_profile(self, profile: str | None) -> LoadedScenario:
        """The same scenario judged by another SLO profile (see Scenario.with_slo_profile)."""
        scenario = self.scenario.with_slo_profile(profile)
        return LoadedScenario(scenario, self.source, self.folder, profile)


def _builtin_folder() -> Path:
    return Path(str(resources.files(_PACKAGE).joinpath(_FOLDER)))


def builtin_names() -> list[str]:
    """Names of the built-in scenarios, sorted."""
    return sorted(p.stem for p in _builtin_folder().glob("*.yaml"))


def load_scenario_file(path: Path) -> LoadedScenario:
    """Load and validate a scenario YAML file; errors name the file and line."""
    text = read_text_file(path, "scenario file")
    scenario = validate_yaml(Scenario, text, str(path), "scenario file")
    return LoadedScenario(scenario, str(path), path.resolve().parent)


def load_scenario(name_or_path: str) -> LoadedScenario:
    """A built-in scenario by name, or a scenario file by path.

    Raises UsageError listing the known names when neither matches.
    """
    candidate = Path(name_or_path).expanduser()
    looks_like_path = candidate.suffix in (".yaml", ".yml") or "/" in name_or_path
    if candidate.is_file() or looks_like_path:
        return load_scenario_file(candidate)
    builtin = _builtin_folder() / f"{name_or_path}.yaml"
    if builtin.is_file():
        loaded = load_scenario_file(builtin)
        return LoadedScenario(loaded.scenario, f"builtin:{name_or_path}", loaded.folder)
    raise UsageError(
        f"Unknown scenario '{name_or_path}'. Known scenarios: {', '.join(builtin_names())}; "
        "or give the path of a scenario YAML file (see docs/loadtest.md for the schema)."
    )
