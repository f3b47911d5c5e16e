"""What the HTML pages show of the logged samples: the first samples of each item's samples
files, and the flips of two runs (each metric both report, paired document by document).
Reads run folders; writes nothing; imports no pytest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.record import ItemRecord, Summary, metric_entries
from ..core.samples import Sample, item_samples, parse_sample, samples_task
from ..judge.baseline import higher_is_better
from ..judge.per_sample import Pairing, pair

# Per samples file: a full data set (thousands of documents with few-shot prompts) would make a
# page of tens of megabytes; the file itself is linked for the rest.
MAX_SAMPLES = 200


@dataclass(frozen=True)
class SamplesFile:
    """A samples JSONL of an item: where it is and how much of it the page shows."""

    path: str  # relative to the run folder
    task: str
    total: int
    shown: int


def task_label(key: str, record: ItemRecord, lm_task: str) -> str:
    """How the sample browser names an item's lm-eval task."""
    return key if lm_task == record.get("task") else f"{key}: {lm_task}"


def load_samples(
    run_dir: Path, key: str, record: ItemRecord, max_samples: int = MAX_SAMPLES
) -> tuple[list[Sample], list[SamplesFile]]:
    """The first ``max_samples`` samples of each samples file of the item."""
    item_dir = record.get("item_dir")
    if not item_dir or not (run_dir / item_dir).is_dir():
        return [], []
    samples: list[Sample] = []
    files: list[SamplesFile] = []
    for path in sorted((run_dir / item_dir).glob("samples_*.jsonl")):
        lm_task = samples_task(path)
        label = task_label(key, record, lm_task)
        total = shown = 0
        with path.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                total += 1
                if shown >= max_samples:
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line cut by a killed run
                samples.append(parse_sample(row, label))
                shown += 1
        files.append(SamplesFile(str(path.relative_to(run_dir)), label, total, shown))
    return samples, files


@dataclass(frozen=True)
class FlipSet:
    """One metric of an item in two runs: paired by document, or why not."""

    key: str
    label: str  # "acc,none", or "subtask:acc,none"
    pairing: Pairing | None
    reason: str  # why there is no pairing


def flip_sets(new: Summary, new_dir: Path, old: Summary, old_dir: Path) -> list[FlipSet]:
    """Every metric both runs report, paired document by document where both logged samples."""
    out = []
    old_tasks = old.get("tasks") or {}
    for key, record in (new.get("tasks") or {}).items():
        base = old_tasks.get(key)
        if not base or not record.get("metrics") or not base.get("metrics"):
            continue
        mine, theirs = item_samples(new_dir, record), item_samples(old_dir, base)
        base_metrics = base.get("metrics") or {}
        for m in metric_entries(record):
            if m.metric not in (base_metrics.get(m.lm_task) or {}):
                continue
            up = higher_is_better((record, base), m.lm_task, m.metric)
            pairing, why = pair(
                mine.get(m.lm_task, []), theirs.get(m.lm_task, []), m.metric, higher_better=up
            )
            out.append(FlipSet(key, m.label, pairing, why))
    return out
