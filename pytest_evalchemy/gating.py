"""Thresholds on metrics: which checks an item's metrics pass. Imports no pytest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .config import Threshold


@dataclass(frozen=True)
class Check:
    """The verdict of one threshold on one lm-eval task's metric."""

    task: str
    metric: str
    value: float | None
    stderr: float | None
    bound: str  # ">= 0.55" or "<= 2.0"
    passed: bool
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stderr_key(metric: str) -> str:
    name, _, flt = metric.partition(",")
    return f"{name}_stderr,{flt}"


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def check_thresholds(
    metrics: dict[str, dict[str, Any]], thresholds: tuple[Threshold, ...]
) -> list[Check]:
    """Compare ``metrics`` (``{task: {"acc,none": v}}``) with ``thresholds``. A threshold
    without a ``task:`` prefix applies to every lm-eval task that reports the metric."""
    checks = []
    for th in thresholds:
        subtask, _, metric = th.metric.rpartition(":")
        targets = [subtask] if subtask else [t for t, m in metrics.items() if metric in m]
        if not targets:
            produced = sorted({k for m in metrics.values() for k in m if "_stderr" not in k})
            checks.append(
                Check(
                    "*",
                    metric,
                    None,
                    None,
                    _bound(th),
                    False,
                    f"no lm-eval task reported {metric}; reported: {', '.join(produced) or 'nothing'}",
                )
            )
            continue
        for task in targets:
            values = metrics.get(task, {})
            value = _as_float(values.get(metric))
            stderr = _as_float(values.get(_stderr_key(metric)))
            if value is None:
                produced = sorted(k for k in values if "_stderr" not in k)
                checks.append(
                    Check(
                        task,
                        metric,
                        None,
                        None,
                        _bound(th),
                        False,
                        f"{task} did not report {metric}; it reported: {', '.join(produced) or 'nothing'}",
                    )
                )
                continue
            ok = (th.min is None or value >= th.min) and (th.max is None or value <= th.max)
            checks.append(Check(task, metric, value, stderr, _bound(th), ok))
    return checks


def _bound(th: Threshold) -> str:
    parts = []
    if th.min is not None:
        parts.append(f">= {th.min:g}")
    if th.max is not None:
        parts.append(f"<= {th.max:g}")
    return " and ".join(parts)


def format_checks(checks: list[Check]) -> str:
    """A small table of checks for a failure report."""
    rows = [("task", "metric", "value", "stderr", "threshold", "verdict")]
    for c in checks:
        rows.append(
            (
                c.task,
                c.metric,
                "-" if c.value is None else f"{c.value:.4f}",
                "-" if c.stderr is None else f"{c.stderr:.4f}",
                c.bound,
                "pass" if c.passed else "FAIL" + (f" ({c.message})" if c.message else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    )
