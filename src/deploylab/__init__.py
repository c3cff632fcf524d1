"""deploylab: deploy ML models fast and measure them honestly."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("deploylab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
