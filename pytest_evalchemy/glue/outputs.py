"""Every path the run will write besides its results folder, tried before any request: a
Markdown summary, a JUnit XML or HTML report that cannot be written would otherwise be
missing (or end the run in a traceback) only once every item has run."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest

from ..core.config import PlannedItem
from ..core.errors import UsageProblem
from ..core.results import output_file_problem, output_folder_problem
from .options import Options, setting_source

# The report files of pytest and of plugins a CI run often adds: (option dest, flag).
REPORT_OPTIONS = (
    ("xmlpath", "--junitxml"),  # pytest's own
    ("htmlpath", "--html"),  # pytest-html
    ("report_log", "--report-log"),  # pytest-reportlog
)


def _given_path(config: pytest.Config, value: str) -> Path:
    # How those plugins read their path: ~ and $VARS expanded, relative to the working folder.
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else config.invocation_params.dir / path


def output_files(config: pytest.Config, options: Options) -> list[tuple[str, Path]]:
    """(where it was given, path) of each file the run writes outside its results folder."""
    files: list[tuple[str, Path]] = []
    if options.markdown is not None:
        files.append((setting_source(config, "markdown"), options.markdown))
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary:
            where = "$GITHUB_STEP_SUMMARY (the Markdown summary is appended to it)"
            files.append((where, _given_path(config, step_summary)))
    for dest, flag in REPORT_OPTIONS:
        value = getattr(config.option, dest, None)
        if isinstance(value, str) and value:
            files.append((flag, _given_path(config, value)))
    return files


def output_folders(config_path: Path, items: Iterable[PlannedItem]) -> list[tuple[str, Path]]:
    """(where it was given, folder) of the tasks' ``output_path`` copies the items make."""
    return [
        (f"tasks.{item.task.key}.output_path of {config_path}", Path.cwd() / item.task.output_path)
        for item in items
        if item.enabled and item.task.output_path
    ]


def check_outputs(config: pytest.Config, options: Options, items: Iterable[PlannedItem]) -> None:
    """Raise ``UsageProblem`` with one line per output path the run could not write (each
    tried, and left as it was)."""
    lines = []
    for where, path in output_files(config, options):
        problem = output_file_problem(path)
        if problem:
            lines.append(f"{where} {path}: cannot be written: {problem}")
    for where, folder in output_folders(options.config_path, items):
        problem = output_folder_problem(folder)
        if problem:
            lines.append(f"{where} {folder}: no copy can be written there: {problem}")
    if lines:
        # One line each, every line as the caller words the first ("evalchemy: ...").
        raise UsageProblem(
            "\nevalchemy: ".join(f"{line}; give a path the run can write" for line in lines)
        )
