"""The HTML report of one run (``report.html``): header, items with their checks, a chart of
the scores with their confidence intervals, the flips against the baseline, and a browser of
the logged samples. Pure: input is a summary dict and its run folder; imports no pytest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.defaults import DEFAULT_CONFIDENCE
from ..core.errors import UsageProblem
from ..core.record import NOT_PASSED, ItemRecord, Status, Summary, as_float, metric_entries
from ..core.redact import redact_url
from ..core.results import atomic_write_text, parse_iso
from ..core.samples import Sample
from ..judge.gating import metric_interval, z_for
from .page import (
    FLIPS_JS,
    esc,
    fact_list,
    filter_js,
    flips_section,
    fmt,
    href,
    html_page,
    inline,
    totals_badges,
)
from .runs import load_run
from .samples import MAX_SAMPLES, SamplesFile, flip_sets, load_samples
from .summary import validity_cell
from .svg import Estimate, interval_chart

REPORT_NAME = "report.html"

_SAMPLES_JS = filter_js(
    ("sample-task", "data-task"),
    ("sample-outcome", "data-outcome"),
    "sample-count",
    "#samples .sample",
    "samples",
)


def _duration(summary: Summary) -> str:
    start, end = parse_iso(summary.get("started_at")), parse_iso(summary.get("finished_at"))
    if start is None or end is None:
        return "unfinished"
    seconds = int((end - start).total_seconds())
    minutes, seconds = divmod(max(seconds, 0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m {seconds}s" if hours else f"{minutes}m {seconds}s"


def _verdict(summary: Summary) -> str:
    tasks = summary.get("tasks") or {}
    bad = sum((summary.get("totals") or {}).get(s, 0) for s in NOT_PASSED)
    if bad:
        return f'<span class="badge failed">{bad} of {len(tasks)} item(s) not passed</span>'
    return '<span class="badge passed">all items passed</span>' if tasks else "no items"


def _run_files(summary: Summary, run_dir: Path) -> str:
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
    links = [f'<a href="{href(n)}">{esc(n)}</a>' for n in names if (run_dir / n).is_file()]
    return '<span class="files">' + (" ".join(links) or "-") + "</span>"


def _header(summary: Summary, run_dir: Path) -> str:
    config = summary.get("config") or {}
    gate = summary.get("gate") or {}
    gate_text = (
        f"{gate.get('mode', 'point')} at {gate.get('confidence', DEFAULT_CONFIDENCE):g} confidence"
    )
    if gate.get("baseline"):
        gate_text += f"; baseline {gate.get('baseline_run_id') or gate['baseline']} (max drop {gate.get('max_drop')})"
    facts = [
        ("model", esc(summary.get("model") or "-")),
        ("endpoint", esc(redact_url(str(summary.get("endpoint") or "")) or "-")),
        ("config", esc(config.get("path") or "-")),
        ("config sha256", f"<code>{esc(config.get('sha256') or '-')}</code>"),
        ("started", esc(summary.get("started_at") or "-")),
        ("finished", esc(summary.get("finished_at") or "-")),
        ("duration", esc(_duration(summary))),
        ("exit status", esc(summary.get("exit_status"))),
        ("items", totals_badges(summary)),
        ("versions", inline(summary.get("versions"))),
        ("seeds", inline(summary.get("seeds"))),
        ("settings", inline(summary.get("settings"))),
        ("gate", esc(gate_text)),
        ("files", _run_files(summary, run_dir)),
    ]
    head = f"<h1>Evalchemy run {esc(summary.get('run_id'))} {_verdict(summary)}</h1>"
    notes = [*(gate.get("notes") or []), *(summary.get("config_warnings") or [])]
    if notes:
        head_notes = "".join(f"<li>{esc(n)}</li>" for n in notes)
        return head + fact_list(facts) + f'<h2>Notes</h2><ul class="notes">{head_notes}</ul>'
    return head + fact_list(facts)


def _check_html(check: dict[str, Any]) -> str:
    ok = bool(check.get("passed"))
    kind = "baseline" if check.get("kind") == "baseline" else "threshold"
    text = f"{kind} {check.get('bound', '')}: {'pass' if ok else 'FAIL'}"
    title = f' title="{esc(check["message"])}"' if check.get("message") else ""
    return f'<span class="check {"pass" if ok else "fail"}"{title}>{esc(text)}</span>'


def _delta_html(checks: list[dict[str, Any]]) -> str:
    base = next((c for c in checks if c.get("kind") == "baseline"), None)
    if base is None or base.get("delta") is None:
        return "-"
    p = base.get("p_value")
    text = fmt(as_float(base["delta"]), signed=True) + (
        f" (p={p:.3g})" if isinstance(p, (int, float)) else ""
    )
    return f'<span class="{"pass" if base.get("passed") else "fail"}">{esc(text)}</span>'


def _item_files(run_dir: Path, record: ItemRecord) -> str:
    item_dir = record.get("item_dir")
    if not item_dir or not (run_dir / item_dir).is_dir():
        return "-"
    folder = run_dir / item_dir
    names = ["results.json", "lm_eval.log", *sorted(p.name for p in folder.glob("samples_*.jsonl"))]
    links = [
        f'<a href="{href(Path(item_dir) / n)}">{esc(n)}</a>'
        for n in names
        if (folder / n).is_file()
    ]
    return '<span class="files">' + (" ".join(links) or "-") + "</span>"


def _n_samples(record: ItemRecord, lm_task: str) -> str:
    counts = (record.get("n_samples") or {}).get(lm_task) or {}
    if "effective" not in counts:
        return "-"
    return f"{counts['effective']} / {counts.get('original', '?')}"


def _items_table(summary: Summary, run_dir: Path, confidence: float) -> str:
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
            value = f'<span class="value">{fmt(m.value)}</span>'
            if m.stderr is not None:
                value += f' ± <span class="stderr">{fmt(m.stderr)}</span>'
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
        item_cell = f"<b>{esc(key)}</b>"
        if record.get("nodeid"):
            item_cell += f'<div class="message">test {esc(record["nodeid"])}</div>'
        if record.get("description"):
            item_cell += f'<div class="message">{esc(record["description"])}</div>'
        if message and status != Status.PASSED:
            item_cell += f'<div class="message">{esc(message)}</div>'
        context = (record.get("context") or {}).get("message")
        if context and context != message.removesuffix(" (--evalchemy-strict-context)"):
            item_cell += f'<div class="message context">context: {esc(context)}</div>'
        invalid = validity_cell(record)
        if invalid:
            # The shares of broken answers, as in the score table (a failed item's message
            # says it again in words).
            item_cell += f'<div class="message context">invalid: {esc(invalid)}</div>'
        item_cell += f"<div>{_item_files(run_dir, record)}</div>"
        for i, (metric_id, label, value, ci, n, checks) in enumerate(lines):
            cells = ""
            if i == 0:
                cells += f'<td{span} class="item">{item_cell}</td>'
                cells += f'<td{span} class="status {esc(status)}">{esc(status)}</td>'
            cells += f'<td class="metric">{esc(label)}</td><td class="num">{value}</td>'
            cells += f'<td class="num">{esc(ci)}</td><td class="num">{esc(n)}</td>'
            if i == 0:
                cells += f'<td{span} class="num">{float(record.get("duration_s") or 0):.1f}s</td>'
            cells += f"<td>{''.join(_check_html(c) for c in checks) or '-'}</td>"
            cells += f'<td class="num">{_delta_html(checks)}</td>'
            rows.append(
                f'<tr data-key="{esc(key)}" data-metric="{esc(metric_id)}" '
                f'data-status="{esc(status)}">{cells}</tr>'
            )
    return f'<h2>Items</h2><table id="items">{head}{"".join(rows)}</table>'


def _scores_chart(summary: Summary, confidence: float) -> str:
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
    return f'<h2>{esc(title)}</h2><div class="charts" id="scores">{"".join(charts)}</div>'


def _sample_html(s: Sample) -> str:
    outcome = {True: "right", False: "wrong", None: "n/a"}[s.correct]
    head = (
        f'<div class="sample-head"><b>{esc(s.task)}</b><span>doc {esc(s.doc_id)}</span>'
        + (f"<span>filter {esc(s.filter)}</span>" if s.filter and s.filter != "none" else "")
        + f'<span class="{outcome.replace("/", "")}">{esc(outcome)}</span>'
        + (f'<span class="muted">{esc(s.score)}</span>' if s.score else "")
        + "</div>"
    )
    body = f"<details><summary>prompt</summary><pre>{esc(s.prompt)}</pre></details>"
    if s.choices:
        items = []
        for i, choice in enumerate(s.choices):
            cls = " ".join(
                c for c, on in (("chosen", i == s.chosen), ("target", i == s.target_index)) if on
            )
            items.append(f'<li class="{cls}">{esc(choice.strip())}</li>')
        body += f"<div>choices (bold: the model's answer):</div><ol>{''.join(items)}</ol>"
    elif s.generation is not None:
        body += f"<div>generation:</div><pre>{esc(s.generation)}</pre>"
    body += (
        f'<div>answer: <code class="answer">{esc(s.answer)}</code></div>'
        f'<div>target: <code class="target">{esc(s.target)}</code></div>'
    )
    return (
        f'<div class="sample" data-task="{esc(s.task)}" data-outcome="{outcome}">{head}{body}</div>'
    )


def _samples_section(summary: Summary, run_dir: Path, max_samples: int) -> str:
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
        f'<option value="{esc(t)}">{esc(t)}</option>' for t in tasks
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
        f'<p class="muted">{esc(f.task)}: the first {f.shown} of {f.total} samples; all in '
        f'<a href="{href(f.path)}">{esc(f.path)}</a></p>'
        for f in cut
    )
    return (
        f'<h2>Samples</h2>{controls}{note}<div id="samples">'
        + "".join(_sample_html(s) for s in samples)
        + "</div>"
    )


def _baseline_flips(summary: Summary, run_dir: Path) -> str:
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


def render_report(summary: Summary, run_dir: Path, *, max_samples: int = MAX_SAMPLES) -> str:
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
    return html_page(f"Evalchemy run {summary.get('run_id')}", body, _SAMPLES_JS + FLIPS_JS)


def write_report(summary: Summary, run_dir: Path, path: Path | None = None) -> Path:
    """Write the run's report (``<run_dir>/report.html`` unless ``path``) and return its path."""
    target = Path(path) if path is not None else Path(run_dir) / REPORT_NAME
    atomic_write_text(target, render_report(summary, Path(run_dir)))
    return target
