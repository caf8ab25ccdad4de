"""llem: measure what LLM inference really costs, and sweep deployment choices with Hydra."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("llem")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
