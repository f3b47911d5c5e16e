"""A previous run's summary used as a baseline: loading it, finding an item's record in it,
and saying when a comparison is not like for like. Imports no pytest."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UsageProblem
from ..core.record import LIKE_FOR_LIKE_DEFAULTS, SUMMARY_GLOB, ItemRecord, Summary, load_summary
from ..core.samples import item_samples
from .canary import ServedRun

# Record settings that change what a score means; batch size and concurrency do not.
LIKE_FOR_LIKE_SETTINGS = ("num_fewshot", "limit")


@dataclass(frozen=True)
class Baseline:
    """A loaded baseline summary."""

    path: Path  # the summary file itself
    summary: Summary = field(repr=False)

    @property
    def run_id(self) -> str | None:
        return self.summary.get("run_id")

    @property
    def served(self) -> ServedRun:
        """The model the baseline names and its canary: were both runs served the same weights?"""
        return ServedRun.of_summary(self.summary)

    def record(self, key: str) -> ItemRecord | None:
        """The baseline's record of item ``key`` (``benchmark/task``), if it has metrics."""
        record = self.summary.get("tasks", {}).get(key)
        return record if record and record.get("metrics") else None

    def samples(self, key: str) -> dict[str, list[dict[str, Any]]]:
        """``{lm_eval_task: rows}`` the baseline logged for item ``key`` (empty if none)."""
        record = self.record(key)
        return item_samples(self.path.parent, record) if record else {}

    def keys_with_metrics(self) -> list[str]:
        return [k for k, r in self.summary.get("tasks", {}).items() if r.get("metrics")]


def find_summary(path: Path) -> Path:
    """The summary file ``path`` names: the file itself, or the only summary in a run folder."""
    if path.is_file():
        return path
    if not path.exists():
        raise UsageProblem(f"--evalchemy-baseline: {str(path)!r} does not exist")
    found = sorted(path.glob(SUMMARY_GLOB))
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise UsageProblem(
            f"--evalchemy-baseline: {str(path)!r} holds several summaries ({names}); pass one file"
        )
    runs = sorted(p.parent.name for p in path.glob(f"*/{SUMMARY_GLOB}"))
    hint = f"; it looks like a results root, pass one run folder: {', '.join(runs)}" if runs else ""
    raise UsageProblem(f"--evalchemy-baseline: no {SUMMARY_GLOB} in {str(path)!r}{hint}")


def load_baseline(path: Path) -> Baseline:
    """Read a baseline summary (a file or a run folder); ``UsageProblem`` when unusable."""
    summary_path = find_summary(Path(path)).absolute()
    return Baseline(summary_path, load_summary(summary_path, label="--evalchemy-baseline: "))


def _show(value: Any) -> str:
    return "default" if value is None else json.dumps(value)


def comparability_problems(record: ItemRecord, base: ItemRecord) -> list[str]:
    """Why ``record`` and its baseline ``base`` are not like for like (settings, task versions)."""
    problems = []
    now, then = record.get("settings", {}), base.get("settings", {})
    for name in LIKE_FOR_LIKE_SETTINGS:
        if now.get(name) != then.get(name):
            problems.append(f"{name} {_show(then.get(name))} -> {_show(now.get(name))}")
    # Chat and reasoning settings; a record from before they existed had the defaults.
    for name, default in LIKE_FOR_LIKE_DEFAULTS.items():
        old, new = then.get(name, default), now.get(name, default)
        if old != new:
            problems.append(f"{name} {_show(old)} -> {_show(new)}")
    new_versions, old_versions = record.get("versions", {}), base.get("versions", {})
    for task in sorted(set(new_versions) & set(old_versions)):
        if new_versions[task] != old_versions[task]:
            problems.append(
                f"{task} version {_show(old_versions[task])} -> {_show(new_versions[task])}"
            )
    return problems


def presence_notes(baseline: Baseline, tasks: Mapping[str, ItemRecord]) -> list[str]:
    """Notes on the items only one of the two runs scored (never a failure)."""
    notes = []
    for key in baseline.keys_with_metrics():
        record = tasks.get(key)
        if record is None:
            notes.append(f"{key}: in the baseline only (not in this run)")
        elif not record.get("metrics"):
            notes.append(f"{key}: in the baseline only (this run: {record.get('status')})")
    for key, record in tasks.items():
        if record.get("metrics") and baseline.record(key) is None:
            notes.append(f"{key}: not in the baseline; nothing to compare")
    return notes


def higher_is_better(records: Iterable[dict[str, Any]], task: str, metric: str) -> bool:
    """lm-eval's direction of ``metric`` (``"acc,none"``) for ``task``, from the first record
    that knows it; True when none does (lm-eval's own default)."""
    name = metric.partition(",")[0]
    for record in records:
        value = record.get("higher_is_better", {}).get(task, {}).get(name)
        if isinstance(value, bool):
            return value
    return True
