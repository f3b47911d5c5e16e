"""Runs on disk for the reports: a run from its folder or summary file (``RunInfo``), and
every run of a results root in the order they started. Imports no pytest."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UsageProblem
from ..core.record import SUMMARY_GLOB, ItemRecord, Summary, load_summary
from ..core.results import parse_iso


@dataclass(frozen=True)
class RunInfo:
    """A finished (or interrupted) run: its summary and where it lives."""

    summary: Summary
    summary_path: Path

    @property
    def folder(self) -> Path:
        return self.summary_path.parent

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.folder.name)

    @property
    def tasks(self) -> dict[str, ItemRecord]:
        return self.summary.get("tasks") or {}


def load_run(path: Path) -> RunInfo:
    """A run from its folder or its summary file; ``UsageProblem`` when there is none."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob(SUMMARY_GLOB))
        if len(found) != 1:
            what = "no" if not found else "several"
            runs = sorted(p.parent.name for p in path.glob(f"*/{SUMMARY_GLOB}"))
            hint = f"; it holds run folders, try --history {path}" if runs and not found else ""
            raise UsageProblem(f"{str(path)!r}: {what} {SUMMARY_GLOB} in this folder{hint}")
        path = found[0]
    elif not path.is_file():
        raise UsageProblem(f"{str(path)!r} does not exist: pass a run folder or its summary file")
    return RunInfo(load_summary(path), path.absolute())


def _started(run: RunInfo) -> tuple[float, str]:
    when = parse_iso(run.summary.get("started_at"))
    # Runs without a readable start time go last, in folder-name order.
    return (when.timestamp() if when else math.inf, run.folder.name)


def history(folder: Path) -> list[RunInfo]:
    """Every run folder directly under ``folder``, oldest first (by the summary's started_at)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageProblem(f"--history {str(folder)!r} is not a folder")
    runs = [load_run(p.parent) for p in sorted(folder.glob(f"*/{SUMMARY_GLOB}"))]
    if not runs:
        raise UsageProblem(f"--history {str(folder)!r}: no run folder ({SUMMARY_GLOB}) under it")
    return sorted(runs, key=_started)
