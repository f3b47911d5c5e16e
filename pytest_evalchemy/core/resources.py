"""Where the files that ship with the plugin are, in a checkout and in an installed wheel."""

from __future__ import annotations

from pathlib import Path

# The package folder (this module lives in its core/ subpackage).
_PACKAGE = Path(__file__).resolve().parents[1]


def _find(repo_relative: str, packaged: str) -> Path:
    # A wheel carries copies under _data/; a checkout (editable install) has the originals.
    inside = _PACKAGE / "_data" / packaged
    if inside.exists():
        return inside
    return _PACKAGE.parent / repo_relative


def schema_path() -> Path:
    """The JSON Schema of the evaluation config."""
    return _find("configs/eval_config.schema.json", "eval_config.schema.json")


def summary_schema_path() -> Path:
    """The JSON Schema of a run's summary (``evalchemy_summary_<run id>.json``)."""
    return _find("configs/summary.schema.json", "summary.schema.json")


def benchmarks_dir() -> Path:
    """The project's offline benchmarks, always on lm-eval's include path."""
    return _find("benchmarks", "benchmarks")


def missing_module(name: str) -> bool:
    """Whether ``name`` cannot be imported (an optional extra is not installed); imports nothing."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def example_config(name: str) -> Path:
    """One of the example configs (``eval_config.json``, ``offline_config.json``)."""
    return _find(f"configs/{name}", f"configs/{name}")
