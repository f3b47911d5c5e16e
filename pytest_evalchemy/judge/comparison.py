"""Comparing runs: each metric by run, its change against a reference run and whether the
change is significant (the gate's two-sample z-test, two-sided). Pure; imports only ``core``
and ``judge``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..core.defaults import DEFAULT_CONFIDENCE
from ..core.record import ItemRecord, MetricEntry, metric_entries
from .baseline import higher_is_better
from .gating import drop_p_value

# What each run's deltas are against: the previous run that has the metric, or the first run.
REFERENCES = ("previous", "first")


class ScoredRun(Protocol):
    """A run as the comparison reads it: its item records by key (``report.runs.RunInfo``)."""

    @property
    def tasks(self) -> Mapping[str, ItemRecord]: ...


@dataclass(frozen=True)
class CompareCell:
    """A metric in one run, and its change against the reference run."""

    value: float | None
    stderr: float | None
    delta: float | None = None
    p_value: float | None = None  # two-sided, of a two-sample z-test on the stderrs
    significant: bool = False
    better: bool | None = None  # the change goes lm-eval's better way; None: no change


@dataclass(frozen=True)
class CompareRow:
    key: str
    lm_task: str
    metric: str
    label: str
    cells: tuple[CompareCell, ...]


def delta_test(
    value: float,
    stderr: float | None,
    ref: float,
    ref_stderr: float | None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float | None, bool]:
    """``(delta, p, significant)``: the gate's two-sample z-test, two-sided here because a
    comparison asks whether a metric changed, not whether it dropped."""
    delta = value - ref
    if stderr is None or ref_stderr is None:
        return delta, None, False
    p = min(1.0, 2 * drop_p_value(abs(delta), stderr, ref_stderr))
    return delta, p, p < 1 - confidence


def compare(
    runs: Sequence[ScoredRun],
    *,
    reference: str = "previous",
    confidence: float = DEFAULT_CONFIDENCE,
) -> list[CompareRow]:
    """Each metric any run reports, by run, with deltas against the previous run that has it
    (``reference="previous"``) or against the first run (``"first"``)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference: expected {' or '.join(REFERENCES)}, got {reference!r}")
    order: dict[tuple[str, str, str], str] = {}
    found: list[dict[tuple[str, str, str], MetricEntry]] = []
    for run in runs:
        mine = {}
        for key, record in run.tasks.items():
            for m in metric_entries(record):
                order.setdefault((key, m.lm_task, m.metric), m.label)
                mine[(key, m.lm_task, m.metric)] = m
        found.append(mine)
    rows = []
    for ident, label in order.items():
        key, lm_task, metric = ident
        cells: list[CompareCell] = []
        for i, run in enumerate(runs):
            m = found[i].get(ident)
            if m is None or m.value is None:
                cells.append(CompareCell(None, None))
                continue
            candidates = [0] if reference == "first" else range(i - 1, -1, -1)
            ref_i = next(
                (j for j in candidates if j < i and _value(found[j].get(ident)) is not None), None
            )
            if ref_i is None:
                cells.append(CompareCell(m.value, m.stderr))
                continue
            ref = found[ref_i][ident]
            assert ref.value is not None
            delta, p, significant = delta_test(m.value, m.stderr, ref.value, ref.stderr, confidence)
            records = (run.tasks.get(key, {}), runs[ref_i].tasks.get(key, {}))
            up = higher_is_better(records, lm_task, metric)
            better = None if delta == 0 else (delta > 0) == up
            cells.append(CompareCell(m.value, m.stderr, delta, p, significant, better))
        rows.append(CompareRow(key, lm_task, metric, label, tuple(cells)))
    return rows


def _value(m: MetricEntry | None) -> float | None:
    return m.value if m is not None else None
