"""The run's record on disk: the summary JSON, the per-benchmark results and logs, the run
and error logs, and the score table. Written by one process (the controller under xdist) from
the records the items send; imports no pytest."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.record import (
    FORMAT_VERSION,
    NOT_PASSED,
    VALIDITY_KINDS,
    EndpointCheckRecord,
    ItemRecord,
    Status,
    Summary,
    metric_entries,
    split_metric,
    totals,
)
from ..core.redact import redact_url
from ..core.results import (
    RunPaths,
    append_text,
    atomic_write_json,
    atomic_write_text,
    merge_results,
    now_iso,
    versions,
)


def summary_header(
    *,
    run_id: str,
    endpoint: str,
    model: str | None,
    endpoints: Sequence[str],
    router: str | None,
    replicas: Sequence[str],
    config_path: str,
    config_sha256: str | None,
    config_warnings: Sequence[str],
    gate: dict[str, Any],
    seeds: Mapping[str, int],
    settings: dict[str, Any],
    endpoint_check: EndpointCheckRecord | None,
    identity: dict[str, Any],
    resumes: Sequence[dict[str, Any]],
) -> Summary:
    """The summary's run-wide fields, every URL redacted here (callers pass them as given)."""
    header: Summary = {
        "run_id": run_id,
        "endpoint": redact_url(endpoint),
        "model": model,
        # Every endpoint of the run (items record the one that served them).
        "endpoints": [redact_url(u) for u in endpoints],
    }
    if router:
        header["router"] = redact_url(router)
        header["replicas"] = [redact_url(u) for u in replicas]
    header.update(
        {
            "config": {"path": config_path, "sha256": config_sha256},
            "config_warnings": list(config_warnings),
            "gate": gate,
            "seeds": dict(seeds),
            "settings": settings,
        }
    )
    if endpoint_check is not None:
        header["endpoint_check"] = endpoint_check
    header["identity"] = identity
    header["resumes"] = list(resumes)
    return header


def assemble_summary(
    header: Summary,
    tasks: Mapping[str, ItemRecord],
    *,
    started_at: str,
    finished_at: str | None,
    exit_status: int | None,
    gate_notes: Sequence[str] | None = None,
) -> Summary:
    """The summary file's content: the run-wide ``header`` (``summary_header``), the run's
    times and versions, the totals and the item records (in the order given)."""
    summary: Summary = {"format_version": FORMAT_VERSION, **header}
    if gate_notes is not None:
        summary["gate"] = {**summary.get("gate", {}), "notes": list(gate_notes)}
    summary.update(
        {
            "started_at": started_at,
            "finished_at": finished_at,
            "exit_status": exit_status,
            "versions": versions(),
            "totals": totals(tasks),
            "tasks": dict(tasks),
        }
    )
    return summary


@dataclass
class RunRecorder:
    """Collects item records and keeps the files of ``paths`` up to date after each one."""

    paths: RunPaths
    header: Summary  # ``summary_header``: run_id, endpoint, model, config, ... (no credentials)
    order: list[str]  # item keys in config order, so parallel runs write the same summary
    tasks: dict[str, ItemRecord] = field(default_factory=dict)
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    exit_status: int | None = None
    # What a reader of the gate should know, known once the run is over (the gate's "notes").
    gate_notes: list[str] | None = None
    # Plugins' say on the summary (the pytest_evalchemy_*summary hooks), applied on each write.
    amend: Callable[[Summary], Summary] | None = None
    _written: bool = False

    def log(self, line: str) -> None:
        """A line in the run log (the folder is created with the first file)."""
        if not self._written:
            self._written = True
            # The seed's layout has an error log in every run, empty when nothing failed.
            append_text(self.paths.errors_log, "")
            head = {k: self.header.get(k) for k in ("run_id", "endpoint", "model", "config")}
            append_text(self.paths.log, f"{now_iso()} started: {json.dumps(head)}\n")
        append_text(self.paths.log, f"{now_iso()} {line}\n")

    def update(self, key: str, record: ItemRecord, longrepr: str = "") -> None:
        """Take an item's record (last report wins) and rewrite what depends on it."""
        self.tasks[key] = record
        status = record["status"]
        line = f"{status.upper():<11} {key} ({record.get('duration_s', 0):.1f}s)"
        if record.get("message"):
            line += f": {record['message'].splitlines()[0]}"
        self.log(line)
        if status in NOT_PASSED:
            append_text(
                self.paths.errors_log,
                f"{now_iso()} {status.upper()} {key}\n{longrepr or record.get('message', '')}\n\n",
            )
        self._write_benchmark(record["benchmark"])
        self.write_summary()

    def _write_benchmark(self, benchmark: str) -> None:
        parts, logs = [], []
        for key in self._sorted_keys():
            rec = self.tasks[key]
            if rec["benchmark"] != benchmark or "item_dir" not in rec:
                continue
            item_dir = self.paths.root / rec["item_dir"]
            results_file = item_dir / "results.json"
            if results_file.exists():
                parts.append(json.loads(results_file.read_text(encoding="utf-8")))
            log_file = item_dir / "lm_eval.log"
            if log_file.exists():
                logs.append(
                    f"===== {key} =====\n{log_file.read_text(encoding='utf-8', errors='replace')}"
                )
        if parts:
            atomic_write_json(self.paths.benchmark_results(benchmark), merge_results(parts))
        if logs:
            atomic_write_text(self.paths.benchmark_log(benchmark), "\n".join(logs))

    def _sorted_keys(self) -> list[str]:
        rank = {k: i for i, k in enumerate(self.order)}
        return sorted(self.tasks, key=lambda k: (rank.get(k, len(rank)), k))

    def summary(self) -> Summary:
        """The summary as the plugin makes it (``assemble_summary``), items in config order."""
        return assemble_summary(
            self.header,
            {k: self.tasks[k] for k in self._sorted_keys()},
            started_at=self.started_at,
            finished_at=self.finished_at,
            exit_status=self.exit_status,
            gate_notes=self.gate_notes,
        )

    def written_summary(self) -> Summary:
        """The summary as it is written: ``summary()`` after ``amend``."""
        data = self.summary()
        return self.amend(data) if self.amend is not None else data

    def write_summary(self) -> None:
        atomic_write_json(self.paths.summary, self.written_summary())

    def finish(self, exit_status: int, interrupted: bool) -> None:
        """Close the run: items still running were interrupted; write the final summary.
        Items that never started stay ``pending``."""
        for record in self.tasks.values():
            if record["status"] == Status.RUNNING:
                record["status"] = Status.INTERRUPTED if interrupted else Status.ERROR
                record["message"] = (
                    record.get("message") or "the run ended before this item finished"
                )
        self.finished_at = now_iso()
        self.exit_status = exit_status
        if self.tasks or self._written:
            self.write_summary()
            counts = totals(self.tasks)
            self.log(
                "finished: "
                + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
                + f" (exit {exit_status})"
            )

    @property
    def written(self) -> bool:
        return self._written


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


# How the score table names each kind of broken answers.
_VALIDITY_LABELS = {
    "length": "max_tokens",
    "unclosed_thinking": "unclosed thinking",
    "cut_prompts": "cut prompts",
}


def validity_cell(record: ItemRecord) -> str:
    """The item's non-zero shares of broken answers, ``max_tokens 88% (7/8)``; "" when none."""
    validity = record.get("validity") or {}
    parts = []
    for kind in VALIDITY_KINDS:
        entry = validity.get(kind)
        if entry and entry.get("count"):
            label = _VALIDITY_LABELS[kind]
            replayed = f", {entry['replayed']} replayed" if entry.get("replayed") else ""
            parts.append(f"{label} {entry['share']:.0%} ({entry['count']}/{entry['of']}{replayed})")
    return ", ".join(parts)


def table_rows(
    tasks: Mapping[str, ItemRecord], metric_filter: dict[str, tuple[str, ...]]
) -> list[tuple[str, ...]]:
    """Rows of the score table: benchmark, task, metric, value with its interval (the
    record's: Wilson for a 0/1 metric) or ± stderr, status, time, and the item's shares of
    broken answers (on its first row)."""
    rows = []
    for key, rec in tasks.items():
        wanted = metric_filter.get(key, ())
        time = f"{rec.get('duration_s', 0):.1f}s"
        invalid = validity_cell(rec)
        shown = False
        for m in metric_entries(rec):
            if wanted and split_metric(m.metric)[0] not in wanted and m.metric not in wanted:
                continue
            interval = ((rec.get("intervals") or {}).get(m.lm_task) or {}).get(m.metric)
            if isinstance(interval, dict) and isinstance(m.raw, (int, float)):
                cell = f"{_fmt(m.raw)} [{interval['low']:.4f}, {interval['high']:.4f}]"
            else:
                stderr = m.raw_stderr
                cell = _fmt(m.raw) + (f" ± {_fmt(stderr)}" if isinstance(stderr, float) else "")
            rows.append(
                (rec["benchmark"], rec["task"], m.label, cell, rec["status"], time, invalid)
            )
            invalid = ""
            shown = True
        if not shown:
            rows.append((rec["benchmark"], rec["task"], "-", "-", rec["status"], time, invalid))
    return rows


def interval_legend(tasks: Mapping[str, ItemRecord]) -> str:
    """What the table's intervals are: ``95% intervals: wilson (0/1 scores), normal``."""
    methods: dict[str, float] = {}
    for rec in tasks.values():
        for by_metric in (rec.get("intervals") or {}).values():
            for iv in by_metric.values():
                methods.setdefault(iv["method"], iv["confidence"])
    if not methods:
        return ""
    what = {
        "wilson": "wilson (a mean of 0/1 scores)",
        "normal": "normal (value ± z·stderr)",
        "bootstrap": "bootstrap (of the logged samples)",
    }
    confidences = sorted({f"{c * 100:g}%" for c in methods.values()})
    return f"{'/'.join(confidences)} intervals: " + ", ".join(what.get(m, m) for m in methods)


def format_table(rows: list[tuple[str, ...]]) -> list[str]:
    """Aligned text lines with a header; the ``invalid`` column only when an item has broken
    answers."""
    header: tuple[str, ...] = ("benchmark", "task", "metric", "value", "status", "time")
    if any(len(r) > len(header) and r[len(header)] for r in rows):
        header = (*header, "invalid")
    rows = [r[: len(header)] for r in rows]
    all_rows = [header, *rows]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in all_rows
    ]


# How the statuses of the table that pytest counts as FAILED differ from a failed check.
_LEGEND = {
    Status.FAILED: "failed: a check missed (threshold, baseline, fewer samples)",
    Status.ERROR: "error: lm-eval or the endpoint failed",
    Status.TIMEOUT: "timeout: the item's timeout ran out",
    Status.CRASHED: "crashed: its worker died",
    Status.INTERRUPTED: "interrupted: the run was stopped",
}


def status_legend(tasks: Mapping[str, ItemRecord]) -> str | None:
    """One line saying what the table's statuses mean next to pytest's words, when the table
    shows a status pytest spells differently (pytest shows F / FAILED for each of them)."""
    shown = {rec.get("status") for rec in tasks.values()}
    if not shown & (set(_LEGEND) - {Status.FAILED}):
        return None
    words = "; ".join(text for status, text in _LEGEND.items() if status in shown)
    return f"status: pytest counts these as failed (F): {words}"
