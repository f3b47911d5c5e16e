"""The run's summary as Markdown, for a CI job page (``$GITHUB_STEP_SUMMARY``) or a PR comment.
A pure function of the summary JSON; imports no pytest."""

from __future__ import annotations

from typing import Any

from ..core.record import NOT_PASSED, ItemRecord, Summary, metric_entries

_HEADER = (
    "Item",
    "Status",
    "Metric",
    "Value",
    "Interval",
    "Threshold",
    "Baseline",
    "Δ",
    "Flips (right→wrong / wrong→right)",
    "Verdict",
)
_ALIGN = ("---", "---", "---", "---:", "---", "---", "---:", "---:", "---", "---")


def _cell(text: Any) -> str:
    # A pipe or a line break would end the table cell or the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _num(value: Any, signed: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _verdict(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return ""
    failed = [c for c in checks if not c["passed"]]
    if failed:
        return "❌ FAIL: " + "; ".join(c.get("message") or c["bound"] for c in failed)
    notes = "; ".join(c["message"] for c in checks if c.get("message"))
    return "✅ pass" + (f" ({notes})" if notes else "")


def _interval(record: ItemRecord, task: str, metric: str, stderr: Any) -> str:
    """``[0.1078, 0.6032] wilson``, or ``± stderr`` for a record without intervals."""
    iv = ((record.get("intervals") or {}).get(task) or {}).get(metric)
    if isinstance(iv, dict):
        return f"[{iv['low']:.4f}, {iv['high']:.4f}] {iv['method']}"
    return f"± {_num(stderr)}" if _num(stderr) != "-" else "-"


def _flips(base: ItemRecord | None) -> str:
    pairing = (base or {}).get("pairing")
    if not pairing:
        return "-"
    return (
        f"{pairing['right_to_wrong']} / {pairing['wrong_to_right']} of {pairing['n']} "
        f"({pairing['method']} p={pairing['p_value']:.3g})"
    )


def _rows(key: str, record: ItemRecord) -> list[tuple[str, ...]]:
    """One row per metric of the item (stderrs go beside their metric)."""
    by_metric: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for check in record.get("checks", []):
        by_metric.setdefault((check["task"], check["metric"]), []).append(check)
    rows = []
    status = record.get("status", "")
    for m in metric_entries(record):
        checks = by_metric.pop((m.lm_task, m.metric), [])
        bounds = [c["bound"] for c in checks if c["kind"] == "threshold"]
        base = next((c for c in checks if c["kind"] == "baseline"), None)
        rows.append(
            (
                key,
                status,
                m.label,
                _num(m.raw),
                _interval(record, m.lm_task, m.metric, m.raw_stderr),
                ", ".join(bounds) or "-",
                _num(base["baseline"]) if base else "-",
                _num(base["delta"], signed=True) if base else "-",
                _flips(base),
                _verdict(checks),
            )
        )
    # Checks on metrics the item did not report (a mistyped threshold) still need a row.
    for (lm_task, metric), checks in by_metric.items():
        bounds = ", ".join(c["bound"] for c in checks)
        rows.append(
            (key, status, f"{lm_task}:{metric}", "-", "-", bounds, "-", "-", "-", _verdict(checks))
        )
    if not rows:
        rows.append((key, status, "-", "-", "-", "-", "-", "-", "-", record.get("message") or ""))
    return rows


def render_markdown(summary: Summary) -> str:
    """A Markdown report of ``summary``: verdict, gate settings, a per-metric table with the
    deltas against the baseline, and the notes on the comparison."""
    tasks = summary.get("tasks", {})
    totals = summary.get("totals", {})
    bad = sum(totals.get(s, 0) for s in NOT_PASSED)
    verdict = f"❌ {bad} of {len(tasks)} item(s) not passed" if bad else "✅ all items passed"
    counts = ", ".join(f"{n} {s}" for s, n in totals.items() if n) or "nothing ran"
    gate = summary.get("gate") or {}
    lines = [f"## Evalchemy run `{summary.get('run_id')}`: {verdict}", ""]
    facts = [f"model `{summary.get('model')}`", counts]
    if gate:
        facts.append(
            f"gate `{gate.get('mode')}` at {gate.get('confidence', 0) * 100:g}% confidence"
        )
        if gate.get("baseline"):
            facts.append(
                f"baseline `{gate.get('baseline_run_id') or gate['baseline']}` "
                f"(max drop {gate.get('max_drop'):g})"
            )
    lines += [" · ".join(facts), ""]
    lines.append("| " + " | ".join(_HEADER) + " |")
    lines.append("|" + "|".join(_ALIGN) + "|")
    for key, record in tasks.items():
        for row in _rows(key, record):
            lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    notes = gate.get("notes") or []
    if notes:
        lines += ["", "### Notes", ""]
        lines += [f"- {_cell(note)}" for note in notes]
    return "\n".join(lines) + "\n"
