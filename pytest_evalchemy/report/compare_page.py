"""The HTML page comparing several runs (``compare.html``): the runs, each metric by run with
its delta and whether it is significant, a chart per metric over the runs, and for two runs
the documents whose score flipped. Pure: input is the loaded runs; imports no pytest."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..core.defaults import DEFAULT_CONFIDENCE
from ..core.results import atomic_write_text
from ..judge.canary import ServedRun, weight_changes
from ..judge.comparison import CompareCell, compare
from ..judge.gating import confidence_interval, z_for
from .page import FLIPS_JS, esc, flips_section, fmt, href, html_page, totals_badges
from .run_page import REPORT_NAME
from .runs import RunInfo
from .samples import flip_sets
from .svg import Estimate, line_chart

COMPARE_NAME = "compare.html"


def _link(target: Path, base: Path) -> str:
    return href(os.path.relpath(target, base))


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
            f'<a href="{_link(report, out_dir)}">{esc(run.run_id)}</a>'
            if report.is_file()
            else f'<a href="{_link(run.summary_path, out_dir)}">{esc(run.run_id)}</a>'
        )
        sha = str((s.get("config") or {}).get("sha256") or "-")[:12]
        rows.append(
            f'<tr data-run="{esc(run.run_id)}"><td>{i}</td><td>{name}</td><td>{esc(s.get("model") or "-")}</td>'
            f"<td>{esc(s.get('started_at') or '-')}</td><td><code>{esc(sha)}</code></td>"
            f"<td>{totals_badges(s)}</td><td>{esc(s.get('exit_status'))}</td></tr>"
        )
    return f'<h2>Runs</h2><table id="runs">{head}{"".join(rows)}</table>'


def weight_warnings(runs: Sequence[RunInfo], reference: str = "previous") -> list[str]:
    """A line for each run served other weights than its reference run under the same model
    name (their canaries differ): its scores measure other weights, not a change."""
    return weight_changes([ServedRun.of_summary(r.summary, r.run_id) for r in runs], reference)


def _compare_cell(cell: CompareCell, confidence: float) -> str:
    if cell.value is None:
        return '<td class="num muted">-</td>'
    text = f'<span class="value">{fmt(cell.value)}</span>'
    if cell.stderr is not None:
        text += f' ± <span class="stderr">{fmt(cell.stderr)}</span>'
    if cell.delta is not None:
        direction = "" if cell.better is None else ("better" if cell.better else "worse")
        cls = f"delta {direction} {'sig' if cell.significant else 'ns'}".strip()
        p = f", p={cell.p_value:.3g}" if cell.p_value is not None else ", no stderr"
        verdict = f"significant at {confidence * 100:g}%" if cell.significant else "not significant"
        text += (
            f'<div class="{cls}" data-significant="{str(cell.significant).lower()}">'
            f"Δ {fmt(cell.delta, signed=True)}{esc(p)} · {esc(verdict)}</div>"
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
        + "".join(f"<th>{i}. {esc(r.run_id)}</th>" for i, r in enumerate(runs, 1))
        + "</tr>"
    )
    body = []
    for row in rows:
        cells = "".join(_compare_cell(c, confidence) for c in row.cells)
        body.append(
            f'<tr data-key="{esc(row.key)}" data-metric="{esc(row.lm_task)}:{esc(row.metric)}">'
            f"<td>{esc(row.key)}</td><td>{esc(row.label)}</td>{cells}</tr>"
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
        f'<p class="muted">Δ is each run against {esc(against)}; a change is significant when a '
        f"two-sample z-test on the two standard errors gives p &lt; {1 - confidence:.2g} "
        f"(two-sided). Bars in the charts: value ± {z:.2f}·stderr.</p>"
        + "".join(
            f'<p class="warning weights">warning: {esc(line)}</p>'
            for line in weight_warnings(runs, reference)
        )
        + _runs_table(runs, out_dir)
        + f'<h2>Metrics</h2><table id="metrics">{head}{"".join(body)}</table>'
        + f'<h2>Over the runs</h2><div class="charts" id="trends">{"".join(charts)}</div>'
    )
    if len(runs) == 2:
        # Two runs of the same questions: which documents flipped is what a reader wants.
        old, new = runs
        sets = flip_sets(new.summary, new.folder, old.summary, old.folder)
        page += flips_section(sets, old.run_id, new.run_id)
    return html_page(f"Evalchemy: {len(runs)} runs compared", page, FLIPS_JS)


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
