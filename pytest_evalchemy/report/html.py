"""HTML reports: one run's ``report.html`` (header, items with their checks, a chart of the
scores with their confidence intervals, a browser of the logged samples) and a page comparing
several runs (deltas with a two-sample z-test, a chart per metric over the runs).

Each page is one self-contained file that opens offline: inline CSS, inline SVG drawn by
``svg.py``, a few lines of inline JavaScript, and a Content-Security-Policy that forbids the
browser to load anything else. Pure: input is a summary dict and its run folder; imports no
pytest.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.errors import UsageProblem
from ..core.record import (
    NOT_PASSED,
    SUMMARY_GLOB,
    MetricEntry,
    Status,
    as_float,
    load_summary,
    metric_entries,
)
from ..core.results import atomic_write_text
from ..core.samples import Sample, item_samples, parse_sample, samples_task
from ..judge.baseline import higher_is_better
from ..judge.gating import (
    DEFAULT_CONFIDENCE,
    confidence_interval,
    drop_p_value,
    metric_interval,
    z_for,
)
from ..judge.per_sample import RIGHT_TO_WRONG, WRONG_TO_RIGHT, Flip, Pairing, pair
from ..run.endpoint import redact_url
from .svg import Estimate, interval_chart, line_chart

REPORT_NAME = "report.html"
COMPARE_NAME = "compare.html"
# Per samples file: a full data set (thousands of documents with few-shot prompts) would make a
# page of tens of megabytes; the file itself is linked for the rest.
MAX_SAMPLES = 200
REFERENCES = ("previous", "first")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _href(path: str | Path) -> str:
    """A relative link to a file of the run (each path segment URL-quoted)."""
    return _e(quote(Path(path).as_posix()))


# ---------------------------------------------------------------- samples


@dataclass(frozen=True)
class SamplesFile:
    """A samples JSONL of an item: where it is and how much of it the page shows."""

    path: str  # relative to the run folder
    task: str
    total: int
    shown: int


def task_label(key: str, record: dict[str, Any], lm_task: str) -> str:
    """How the sample browser names an item's lm-eval task."""
    return key if lm_task == record.get("task") else f"{key}: {lm_task}"


def load_samples(
    run_dir: Path, key: str, record: dict[str, Any], max_samples: int = MAX_SAMPLES
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


# ---------------------------------------------------------------- page frame

_CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #57606a; --line: #d0d7de; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px; background: #eaeef2; }
.passed, .pass, .right, .better { color: var(--ok); } .failed, .error, .timeout, .crashed, .interrupted, .fail, .wrong, .worse { color: var(--bad); }
.badge.passed { background: #dafbe1; } .badge.failed, .badge.error, .badge.timeout, .badge.crashed, .badge.interrupted { background: #ffebe9; }
.skipped, .muted, .ns { color: var(--muted); } .sig { font-weight: bold; }
.check { display: block; white-space: nowrap; } .message { color: var(--muted); font-size: 12px; max-width: 40em; }
.files a { margin-right: 8px; white-space: nowrap; } td .files { font-size: 12px; }
.controls { margin: 8px 0; display: flex; gap: 16px; align-items: center; flex-wrap: wrap; }
.sample { border: 1px solid var(--line); border-radius: 6px; padding: 6px 10px; margin: 8px 0; }
.sample[hidden] { display: none; }
.sample-head { display: flex; gap: 12px; flex-wrap: wrap; align-items: baseline; }
.sample pre { white-space: pre-wrap; background: #f6f8fa; padding: 6px; margin: 4px 0; max-height: 24em; overflow: auto; }
.sample ol { margin: 4px 0; } .sample li.chosen { font-weight: bold; } .sample li.target::after { content: "  ← target"; color: var(--ok); }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
tr.flip[hidden] { display: none; } #flips pre { white-space: pre-wrap; max-width: 40em; max-height: 16em; overflow: auto; }
"""

# A pair of <select>s filtering rows by two data attributes, with a count of what is shown.
_FILTER_JS = """
(function () {
  var first = document.getElementById("FIRST_ID");
  var second = document.getElementById("SECOND_ID");
  var count = document.getElementById("COUNT_ID");
  if (!first || !second) { return; }
  function apply() {
    var rows = document.querySelectorAll("ROWS");
    var shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      var ok = (first.value === "" || r.getAttribute("FIRST_ATTR") === first.value) &&
               (second.value === "" || r.getAttribute("SECOND_ATTR") === second.value);
      r.hidden = !ok;
      if (ok) { shown++; }
    }
    count.textContent = shown + " of " + rows.length + " NOUN shown";
  }
  first.addEventListener("change", apply);
  second.addEventListener("change", apply);
  apply();
})();
"""


def _filter_js(
    first: tuple[str, str], second: tuple[str, str], count: str, rows: str, noun: str
) -> str:
    """The filter script: ``first`` and ``second`` are (select id, row attribute)."""
    fields = {
        "FIRST_ID": first[0],
        "FIRST_ATTR": first[1],
        "SECOND_ID": second[0],
        "SECOND_ATTR": second[1],
        "COUNT_ID": count,
        "ROWS": rows,
        "NOUN": noun,
    }
    script = _FILTER_JS
    for field_name, value in fields.items():
        script = script.replace(field_name, value)
    return script


_SAMPLES_JS = _filter_js(
    ("sample-task", "data-task"),
    ("sample-outcome", "data-outcome"),
    "sample-count",
    "#samples .sample",
    "samples",
)

# The browser loads nothing but this file: no scripts, styles, fonts or images from elsewhere.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def _page(title: str, body: str, script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        # An empty icon: otherwise the browser asks for /favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        + (f"<script>{script}</script>\n" if script else "")
        + "</body></html>\n"
    )


def _facts(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are HTML already (escaped by the caller)."""
    return (
        '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
    )


def _inline(mapping: dict[str, Any] | None) -> str:
    if not mapping:
        return "-"
    return _e(", ".join(f"{k}={v}" for k, v in mapping.items()))


def _parse_time(text: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _duration(summary: dict[str, Any]) -> str:
    start, end = _parse_time(summary.get("started_at")), _parse_time(summary.get("finished_at"))
    if start is None or end is None:
        return "unfinished"
    seconds = int((end - start).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s"


def _verdict(summary: dict[str, Any]) -> str:
    tasks = summary.get("tasks") or {}
    bad = sum((summary.get("totals") or {}).get(s, 0) for s in NOT_PASSED)
    if bad:
        return f'<span class="badge failed">{bad} of {len(tasks)} item(s) not passed</span>'
    return '<span class="badge passed">all items passed</span>' if tasks else "no items"


def _totals(summary: dict[str, Any]) -> str:
    counts = summary.get("totals") or {}
    return (
        " ".join(f'<span class="badge {_e(s)}">{n} {_e(s)}</span>' for s, n in counts.items() if n)
        or "nothing ran"
    )


# ---------------------------------------------------------------- the run report


def _run_files(summary: dict[str, Any], run_dir: Path) -> str:
    run_id = str(summary.get("run_id") or "")
    names = [
        f"evalchemy_summary_{run_id}.json",
        f"evalchemy_{run_id}.log",
        f"evalchemy_errors_{run_id}.log",
    ]
    benchmarks = dict.fromkeys(
        r.get("benchmark", "") for r in (summary.get("tasks") or {}).values()
    )
    for bench in benchmarks:
        names += [f"{bench}_results.json", f"{bench}_benchmark.log"]
    links = [f'<a href="{_href(n)}">{_e(n)}</a>' for n in names if (run_dir / n).is_file()]
    return '<span class="files">' + (" ".join(links) or "-") + "</span>"


def _header(summary: dict[str, Any], run_dir: Path) -> str:
    config = summary.get("config") or {}
    gate = summary.get("gate") or {}
    gate_text = (
        f"{gate.get('mode', 'point')} at {gate.get('confidence', DEFAULT_CONFIDENCE):g} confidence"
    )
    if gate.get("baseline"):
        gate_text += f"; baseline {gate.get('baseline_run_id') or gate['baseline']} (max drop {gate.get('max_drop')})"
    facts = [
        ("model", _e(summary.get("model") or "-")),
        ("endpoint", _e(redact_url(str(summary.get("endpoint") or "")) or "-")),
        ("config", _e(config.get("path") or "-")),
        ("config sha256", f"<code>{_e(config.get('sha256') or '-')}</code>"),
        ("started", _e(summary.get("started_at") or "-")),
        ("finished", _e(summary.get("finished_at") or "-")),
        ("duration", _e(_duration(summary))),
        ("exit status", _e(summary.get("exit_status"))),
        ("items", _totals(summary)),
        ("versions", _inline(summary.get("versions"))),
        ("seeds", _inline(summary.get("seeds"))),
        ("settings", _inline(summary.get("settings"))),
        ("gate", _e(gate_text)),
        ("files", _run_files(summary, run_dir)),
    ]
    head = f"<h1>Evalchemy run {_e(summary.get('run_id'))} {_verdict(summary)}</h1>"
    notes = [*(gate.get("notes") or []), *(summary.get("config_warnings") or [])]
    if notes:
        head_notes = "".join(f"<li>{_e(n)}</li>" for n in notes)
        return head + _facts(facts) + f'<h2>Notes</h2><ul class="notes">{head_notes}</ul>'
    return head + _facts(facts)


def _check_html(check: dict[str, Any]) -> str:
    ok = bool(check.get("passed"))
    kind = "baseline" if check.get("kind") == "baseline" else "threshold"
    text = f"{kind} {check.get('bound', '')}: {'pass' if ok else 'FAIL'}"
    title = f' title="{_e(check["message"])}"' if check.get("message") else ""
    return f'<span class="check {"pass" if ok else "fail"}"{title}>{_e(text)}</span>'


def _delta_html(checks: list[dict[str, Any]]) -> str:
    base = next((c for c in checks if c.get("kind") == "baseline"), None)
    if base is None or base.get("delta") is None:
        return "-"
    p = base.get("p_value")
    text = _fmt(as_float(base["delta"]), signed=True) + (
        f" (p={p:.3g})" if isinstance(p, (int, float)) else ""
    )
    return f'<span class="{"pass" if base.get("passed") else "fail"}">{_e(text)}</span>'


def _item_files(run_dir: Path, record: dict[str, Any]) -> str:
    item_dir = record.get("item_dir")
    if not item_dir or not (run_dir / item_dir).is_dir():
        return "-"
    folder = run_dir / item_dir
    names = ["results.json", "lm_eval.log", *sorted(p.name for p in folder.glob("samples_*.jsonl"))]
    links = [
        f'<a href="{_href(Path(item_dir) / n)}">{_e(n)}</a>'
        for n in names
        if (folder / n).is_file()
    ]
    return '<span class="files">' + (" ".join(links) or "-") + "</span>"


def _n_samples(record: dict[str, Any], lm_task: str) -> str:
    counts = (record.get("n_samples") or {}).get(lm_task) or {}
    if "effective" not in counts:
        return "-"
    return f"{counts['effective']} / {counts.get('original', '?')}"


def _items_table(summary: dict[str, Any], run_dir: Path, confidence: float) -> str:
    pct = f"{confidence * 100:g}%"
    head = (
        "<tr><th>item</th><th>status</th><th>metric</th><th>value ± stderr</th>"
        f"<th>{pct} CI</th><th>samples</th><th>time</th><th>checks</th><th>baseline Δ</th></tr>"
    )
    rows = []
    for key, record in (summary.get("tasks") or {}).items():
        status = str(record.get("status", ""))
        checks_by: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for check in record.get("checks") or []:
            checks_by.setdefault((check.get("task", ""), check.get("metric", "")), []).append(check)
        lines: list[tuple[str, str, str, str, str, list[dict[str, Any]]]] = []
        for m in metric_entries(record):
            checks = checks_by.pop((m.lm_task, m.metric), [])
            value = f'<span class="value">{_fmt(m.value)}</span>'
            if m.stderr is not None:
                value += f' ± <span class="stderr">{_fmt(m.stderr)}</span>'
            ci = "-"
            interval = metric_interval(record, m.lm_task, m.metric, confidence)
            if m.value is not None and interval is not None:
                ci = f"{interval.text()} {interval.method}"
            lines.append(
                (
                    f"{m.lm_task}:{m.metric}",
                    m.label,
                    value,
                    ci,
                    _n_samples(record, m.lm_task),
                    checks,
                )
            )
        # Checks on metrics the item did not report (a mistyped threshold) still need a row.
        for (task, metric), checks in checks_by.items():
            lines.append((f"{task}:{metric}", f"{task}:{metric}", "-", "-", "-", checks))
        if not lines:
            lines.append(("", "-", "-", "-", "-", []))
        span = f' rowspan="{len(lines)}"' if len(lines) > 1 else ""
        message = record.get("message") or ""
        item_cell = f"<b>{_e(key)}</b>"
        if record.get("nodeid"):
            item_cell += f'<div class="message">test {_e(record["nodeid"])}</div>'
        if record.get("description"):
            item_cell += f'<div class="message">{_e(record["description"])}</div>'
        if message and status != Status.PASSED:
            item_cell += f'<div class="message">{_e(message)}</div>'
        context = (record.get("context") or {}).get("message")
        if context and context != message.removesuffix(" (--evalchemy-strict-context)"):
            item_cell += f'<div class="message context">context: {_e(context)}</div>'
        item_cell += f"<div>{_item_files(run_dir, record)}</div>"
        for i, (metric_id, label, value, ci, n, checks) in enumerate(lines):
            cells = ""
            if i == 0:
                cells += f'<td{span} class="item">{item_cell}</td>'
                cells += f'<td{span} class="status {_e(status)}">{_e(status)}</td>'
            cells += f'<td class="metric">{_e(label)}</td><td class="num">{value}</td>'
            cells += f'<td class="num">{_e(ci)}</td><td class="num">{_e(n)}</td>'
            if i == 0:
                cells += f'<td{span} class="num">{float(record.get("duration_s") or 0):.1f}s</td>'
            cells += f"<td>{''.join(_check_html(c) for c in checks) or '-'}</td>"
            cells += f'<td class="num">{_delta_html(checks)}</td>'
            rows.append(
                f'<tr data-key="{_e(key)}" data-metric="{_e(metric_id)}" '
                f'data-status="{_e(status)}">{cells}</tr>'
            )
    return f'<h2>Items</h2><table id="items">{head}{"".join(rows)}</table>'


def _scores_chart(summary: dict[str, Any], confidence: float) -> str:
    fractions, others = [], []
    for key, record in (summary.get("tasks") or {}).items():
        for m in metric_entries(record):
            if m.value is None:
                continue
            interval = metric_interval(record, m.lm_task, m.metric, confidence)
            lo, hi = (interval.low, interval.high) if interval is not None else (None, None)
            est = Estimate(f"{key} {m.label}", m.value, lo, hi, str(record.get("status", "")))
            # Fractions share the 0-1 scale; a perplexity would squash them into a corner.
            (fractions if 0 <= m.value <= 1 else others).append(est)
    if not fractions and not others:
        return ""
    z = z_for(confidence)
    title = (
        f"Scores with {confidence * 100:g}% confidence intervals (Wilson for means of 0/1 "
        f"scores, value ± {z:.2f}·stderr otherwise)"
    )
    charts = [interval_chart(rows) for rows in (fractions, others) if rows]
    return f'<h2>{_e(title)}</h2><div class="charts" id="scores">{"".join(charts)}</div>'


def _sample_html(s: Sample) -> str:
    outcome = {True: "right", False: "wrong", None: "n/a"}[s.correct]
    head = (
        f'<div class="sample-head"><b>{_e(s.task)}</b><span>doc {_e(s.doc_id)}</span>'
        + (f"<span>filter {_e(s.filter)}</span>" if s.filter and s.filter != "none" else "")
        + f'<span class="{outcome.replace("/", "")}">{_e(outcome)}</span>'
        + (f'<span class="muted">{_e(s.score)}</span>' if s.score else "")
        + "</div>"
    )
    body = f"<details><summary>prompt</summary><pre>{_e(s.prompt)}</pre></details>"
    if s.choices:
        items = []
        for i, choice in enumerate(s.choices):
            cls = " ".join(
                c for c, on in (("chosen", i == s.chosen), ("target", i == s.target_index)) if on
            )
            items.append(f'<li class="{cls}">{_e(choice.strip())}</li>')
        body += f"<div>choices (bold: the model's answer):</div><ol>{''.join(items)}</ol>"
    elif s.generation is not None:
        body += f"<div>generation:</div><pre>{_e(s.generation)}</pre>"
    body += (
        f'<div>answer: <code class="answer">{_e(s.answer)}</code></div>'
        f'<div>target: <code class="target">{_e(s.target)}</code></div>'
    )
    return (
        f'<div class="sample" data-task="{_e(s.task)}" data-outcome="{outcome}">{head}{body}</div>'
    )


def _samples_section(summary: dict[str, Any], run_dir: Path, max_samples: int) -> str:
    samples: list[Sample] = []
    files: list[SamplesFile] = []
    for key, record in (summary.get("tasks") or {}).items():
        s, f = load_samples(run_dir, key, record, max_samples)
        samples += s
        files += f
    if not files:
        return (
            '<h2>Samples</h2><p class="muted">No samples were logged: a task with '
            '<code>"log_samples": true</code> in the config shows its samples here.</p>'
        )
    tasks = list(dict.fromkeys(f.task for f in files))
    options = '<option value="">all tasks</option>' + "".join(
        f'<option value="{_e(t)}">{_e(t)}</option>' for t in tasks
    )
    controls = (
        '<div class="controls">'
        f'<label>task <select id="sample-task">{options}</select></label>'
        '<label>outcome <select id="sample-outcome"><option value="">right and wrong</option>'
        '<option value="right">right</option><option value="wrong">wrong</option>'
        '<option value="n/a">not right/wrong</option></select></label>'
        '<span id="sample-count"></span></div>'
    )
    cut = [f for f in files if f.shown < f.total]
    note = "".join(
        f'<p class="muted">{_e(f.task)}: the first {f.shown} of {f.total} samples; all in '
        f'<a href="{_href(f.path)}">{_e(f.path)}</a></p>'
        for f in cut
    )
    return (
        f'<h2>Samples</h2>{controls}{note}<div id="samples">'
        + "".join(_sample_html(s) for s in samples)
        + "</div>"
    )


# ---------------------------------------------------------------- flips


@dataclass(frozen=True)
class FlipSet:
    """One metric of an item in two runs: paired by document, or why not."""

    key: str
    label: str  # "acc,none", or "subtask:acc,none"
    pairing: Pairing | None
    reason: str  # why there is no pairing


def flip_sets(
    new: dict[str, Any], new_dir: Path, old: dict[str, Any], old_dir: Path
) -> list[FlipSet]:
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


_FLIPS_JS = _filter_js(
    ("flip-metric", "data-metric"),
    ("flip-direction", "data-direction"),
    "flip-count",
    "#flips .flip",
    "flips",
)


def _flip_html(ident: str, flip: Flip) -> str:
    old, new = flip.samples(ident)
    arrow = "right → wrong" if flip.direction == RIGHT_TO_WRONG else "wrong → right"
    cls = "worse" if flip.direction == RIGHT_TO_WRONG else "better"
    return (
        f'<tr class="flip" data-metric="{_e(ident)}" data-direction="{_e(flip.direction)}" '
        f'data-doc="{_e(flip.doc_id)}"><td>{_e(ident)}</td><td class="num">{_e(flip.doc_id)}</td>'
        f'<td class="{cls}">{_e(arrow)}</td><td><code class="target">{_e(new.target)}</code></td>'
        f'<td><code class="old-answer">{_e(old.answer)}</code> <span class="muted">'
        f"({flip.before:g})</span></td>"
        f'<td><code class="new-answer">{_e(new.answer)}</code> <span class="muted">'
        f"({flip.after:g})</span></td>"
        f"<td><details><summary>prompt</summary><pre>{_e(new.prompt)}</pre></details></td></tr>"
    )


def flips_section(sets: Sequence[FlipSet], old_name: str, new_name: str) -> str:
    """The flips view: per metric the paired counts, then each flipped document with both
    answers side by side and its prompt, filtered by metric and by direction."""
    if not sets:
        return ""
    counts, rows, idents = [], [], []
    for fs in sets:
        ident = f"{fs.key} {fs.label}"
        if fs.pairing is None:
            counts.append(
                f'<tr data-metric="{_e(ident)}"><td>{_e(ident)}</td>'
                f'<td colspan="4" class="muted">not paired: {_e(fs.reason)}</td></tr>'
            )
            continue
        t = fs.pairing.test
        idents.append(ident)
        counts.append(
            f'<tr data-metric="{_e(ident)}"><td>{_e(ident)}</td><td class="num">{t.n}</td>'
            f'<td class="num worse right-to-wrong">{t.right_to_wrong}</td>'
            f'<td class="num better wrong-to-right">{t.wrong_to_right}</td>'
            f'<td class="num">{_e(t.method)} p={t.p_value:.3g}</td></tr>'
        )
        ordered = sorted(fs.pairing.flips, key=lambda f: f.direction != RIGHT_TO_WRONG)
        rows += [_flip_html(ident, f) for f in ordered[:MAX_SAMPLES]]
    options = '<option value="">all metrics</option>' + "".join(
        f'<option value="{_e(i)}">{_e(i)}</option>' for i in idents
    )
    controls = (
        '<div class="controls">'
        f'<label>metric <select id="flip-metric">{options}</select></label>'
        '<label>direction <select id="flip-direction"><option value="">both</option>'
        f'<option value="{RIGHT_TO_WRONG}">right → wrong</option>'
        f'<option value="{WRONG_TO_RIGHT}">wrong → right</option></select></label>'
        '<span id="flip-count"></span></div>'
    )
    head = (
        "<tr><th>metric</th><th>doc</th><th>flip</th><th>target</th>"
        f"<th>{_e(old_name)} answer</th><th>{_e(new_name)} answer</th><th>prompt</th></tr>"
    )
    return (
        f"<h2>Flips: {_e(new_name)} against {_e(old_name)}</h2>"
        '<p class="muted">Documents scored by both runs, paired by doc_id (prompts checked by '
        "their hash); a flip is a document whose score changed.</p>"
        '<table id="flip-counts"><tr><th>metric</th><th>paired</th><th>right → wrong</th>'
        f"<th>wrong → right</th><th>paired test (one-sided, of a drop)</th></tr>{''.join(counts)}"
        f'</table>{controls}<table id="flips">{head}{"".join(rows)}</table>'
    )


def _baseline_flips(summary: dict[str, Any], run_dir: Path) -> str:
    """The flips view of a run gated against a baseline (when the baseline is still there)."""
    path = (summary.get("gate") or {}).get("baseline")
    if not path or not Path(path).is_file():
        return ""
    try:
        base = load_run(Path(path))
    except UsageProblem:
        return ""
    sets = flip_sets(summary, run_dir, base.summary, base.folder)
    return flips_section(sets, f"baseline {base.run_id}", "this run")


def render_report(summary: dict[str, Any], run_dir: Path, *, max_samples: int = MAX_SAMPLES) -> str:
    """The run's report page."""
    run_dir = Path(run_dir)
    gate = summary.get("gate") or {}
    confidence = float(gate.get("confidence") or DEFAULT_CONFIDENCE)
    body = (
        _header(summary, run_dir)
        + _items_table(summary, run_dir, confidence)
        + _scores_chart(summary, confidence)
        + _baseline_flips(summary, run_dir)
        + _samples_section(summary, run_dir, max_samples)
    )
    return _page(f"Evalchemy run {summary.get('run_id')}", body, _SAMPLES_JS + _FLIPS_JS)


def write_report(summary: dict[str, Any], run_dir: Path, path: Path | None = None) -> Path:
    """Write the run's report (``<run_dir>/report.html`` unless ``path``) and return its path."""
    target = Path(path) if path is not None else Path(run_dir) / REPORT_NAME
    atomic_write_text(target, render_report(summary, Path(run_dir)))
    return target


# ---------------------------------------------------------------- several runs


@dataclass(frozen=True)
class RunInfo:
    """A finished (or interrupted) run: its summary and where it lives."""

    summary: dict[str, Any]
    summary_path: Path

    @property
    def folder(self) -> Path:
        return self.summary_path.parent

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.folder.name)

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
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
    when = _parse_time(run.summary.get("started_at"))
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
    runs: Sequence[RunInfo], *, reference: str = "previous", confidence: float = DEFAULT_CONFIDENCE
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


def _link(target: Path, base: Path) -> str:
    return _href(os.path.relpath(target, base))


def _runs_table(runs: Sequence[RunInfo], out_dir: Path) -> str:
    head = (
        "<tr><th>#</th><th>run</th><th>model</th><th>started</th><th>config sha256</th>"
        "<th>items</th><th>exit</th></tr>"
    )
    rows = []
    for i, run in enumerate(runs, 1):
        s = run.summary
        report = run.folder / REPORT_NAME
        name = (
            f'<a href="{_link(report, out_dir)}">{_e(run.run_id)}</a>'
            if report.is_file()
            else f'<a href="{_link(run.summary_path, out_dir)}">{_e(run.run_id)}</a>'
        )
        sha = str((s.get("config") or {}).get("sha256") or "-")[:12]
        rows.append(
            f'<tr data-run="{_e(run.run_id)}"><td>{i}</td><td>{name}</td><td>{_e(s.get("model") or "-")}</td>'
            f"<td>{_e(s.get('started_at') or '-')}</td><td><code>{_e(sha)}</code></td>"
            f"<td>{_totals(s)}</td><td>{_e(s.get('exit_status'))}</td></tr>"
        )
    return f'<h2>Runs</h2><table id="runs">{head}{"".join(rows)}</table>'


def _compare_cell(cell: CompareCell, confidence: float) -> str:
    if cell.value is None:
        return '<td class="num muted">-</td>'
    text = f'<span class="value">{_fmt(cell.value)}</span>'
    if cell.stderr is not None:
        text += f' ± <span class="stderr">{_fmt(cell.stderr)}</span>'
    if cell.delta is not None:
        direction = "" if cell.better is None else ("better" if cell.better else "worse")
        cls = f"delta {direction} {'sig' if cell.significant else 'ns'}".strip()
        p = f", p={cell.p_value:.3g}" if cell.p_value is not None else ", no stderr"
        verdict = f"significant at {confidence * 100:g}%" if cell.significant else "not significant"
        text += (
            f'<div class="{cls}" data-significant="{str(cell.significant).lower()}">'
            f"Δ {_fmt(cell.delta, signed=True)}{_e(p)} · {_e(verdict)}</div>"
        )
    return f'<td class="num">{text}</td>'


def render_comparison(
    runs: Sequence[RunInfo],
    *,
    out_dir: Path,
    reference: str = "previous",
    confidence: float = DEFAULT_CONFIDENCE,
) -> str:
    """The comparison page of ``runs`` (links relative to ``out_dir``, where it is written)."""
    rows = compare(runs, reference=reference, confidence=confidence)
    against = "the previous run" if reference == "previous" else "the first run"
    head = (
        "<tr><th>item</th><th>metric</th>"
        + "".join(f"<th>{i}. {_e(r.run_id)}</th>" for i, r in enumerate(runs, 1))
        + "</tr>"
    )
    body = []
    for row in rows:
        cells = "".join(_compare_cell(c, confidence) for c in row.cells)
        body.append(
            f'<tr data-key="{_e(row.key)}" data-metric="{_e(row.lm_task)}:{_e(row.metric)}">'
            f"<td>{_e(row.key)}</td><td>{_e(row.label)}</td>{cells}</tr>"
        )
    labels = [r.run_id for r in runs]
    charts = []
    for row in rows:
        points = []
        for c in row.cells:
            if c.value is None:
                points.append(None)
                continue
            lo = hi = None
            if c.stderr is not None:
                lo, hi = confidence_interval(c.value, c.stderr, confidence)
            points.append(Estimate("", c.value, lo, hi))
        charts.append(line_chart(f"{row.key} {row.label}", labels, points))
    z = z_for(confidence)
    page = (
        f"<h1>Evalchemy: {len(runs)} runs compared</h1>"
        f'<p class="muted">Δ is each run against {_e(against)}; a change is significant when a '
        f"two-sample z-test on the two standard errors gives p &lt; {1 - confidence:.2g} "
        f"(two-sided). Bars in the charts: value ± {z:.2f}·stderr.</p>"
        + _runs_table(runs, out_dir)
        + f'<h2>Metrics</h2><table id="metrics">{head}{"".join(body)}</table>'
        + f'<h2>Over the runs</h2><div class="charts" id="trends">{"".join(charts)}</div>'
    )
    if len(runs) == 2:
        # Two runs of the same questions: which documents flipped is what a reader wants.
        old, new = runs
        sets = flip_sets(new.summary, new.folder, old.summary, old.folder)
        page += flips_section(sets, old.run_id, new.run_id)
    return _page(f"Evalchemy: {len(runs)} runs compared", page, _FLIPS_JS)


def write_comparison(
    runs: Sequence[RunInfo],
    out: Path,
    *,
    reference: str = "previous",
    confidence: float = DEFAULT_CONFIDENCE,
) -> Path:
    """Write the comparison page of ``runs`` to ``out`` and return its path."""
    out = Path(out).absolute()
    text = render_comparison(runs, out_dir=out.parent, reference=reference, confidence=confidence)
    atomic_write_text(out, text)
    return out
