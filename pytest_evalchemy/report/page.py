"""The frame both HTML pages share (the run's report and the comparison): escaping, the
inline CSS and scripts, the Content-Security-Policy, small cells, and the flips view both pages
show. Each page is one self-contained file that opens offline: inline CSS, inline SVG drawn by
``svg.py``, a few lines of inline JavaScript, and a Content-Security-Policy that forbids the
browser to load anything else. Imports no pytest."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..core.record import Summary
from ..judge.per_sample import RIGHT_TO_WRONG, WRONG_TO_RIGHT, Flip
from .samples import MAX_SAMPLES, FlipSet


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too: it goes into attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value: float | None, signed: bool = False) -> str:
    """A score to 4 places, "-" for none."""
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def href(path: str | Path) -> str:
    """A relative link to a file of the run (each path segment URL-quoted)."""
    return esc(quote(Path(path).as_posix()))


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
.warning { color: var(--warn); font-weight: bold; }
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


def filter_js(
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


# The browser loads nothing but this file: no scripts, styles, fonts or images from elsewhere.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"


def html_page(title: str, body: str, script: str = "") -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        # An empty icon: otherwise the browser asks for /favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        + (f"<script>{script}</script>\n" if script else "")
        + "</body></html>\n"
    )


def fact_list(pairs: Iterable[tuple[str, str]]) -> str:
    """A definition list; values are HTML already (escaped by the caller)."""
    return (
        '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"
    )


def inline(mapping: dict[str, Any] | None) -> str:
    if not mapping:
        return "-"
    return esc(", ".join(f"{k}={v}" for k, v in mapping.items()))


def totals_badges(summary: Summary) -> str:
    counts = summary.get("totals") or {}
    return (
        " ".join(
            f'<span class="badge {esc(s)}">{n} {esc(s)}</span>' for s, n in counts.items() if n
        )
        or "nothing ran"
    )


FLIPS_JS = filter_js(
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
        f'<tr class="flip" data-metric="{esc(ident)}" data-direction="{esc(flip.direction)}" '
        f'data-doc="{esc(flip.doc_id)}"><td>{esc(ident)}</td><td class="num">{esc(flip.doc_id)}</td>'
        f'<td class="{cls}">{esc(arrow)}</td><td><code class="target">{esc(new.target)}</code></td>'
        f'<td><code class="old-answer">{esc(old.answer)}</code> <span class="muted">'
        f"({flip.before:g})</span></td>"
        f'<td><code class="new-answer">{esc(new.answer)}</code> <span class="muted">'
        f"({flip.after:g})</span></td>"
        f"<td><details><summary>prompt</summary><pre>{esc(new.prompt)}</pre></details></td></tr>"
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
                f'<tr data-metric="{esc(ident)}"><td>{esc(ident)}</td>'
                f'<td colspan="4" class="muted">not paired: {esc(fs.reason)}</td></tr>'
            )
            continue
        t = fs.pairing.test
        idents.append(ident)
        counts.append(
            f'<tr data-metric="{esc(ident)}"><td>{esc(ident)}</td><td class="num">{t.n}</td>'
            f'<td class="num worse right-to-wrong">{t.right_to_wrong}</td>'
            f'<td class="num better wrong-to-right">{t.wrong_to_right}</td>'
            f'<td class="num">{esc(t.method)} p={t.p_value:.3g}</td></tr>'
        )
        ordered = sorted(fs.pairing.flips, key=lambda f: f.direction != RIGHT_TO_WRONG)
        rows += [_flip_html(ident, f) for f in ordered[:MAX_SAMPLES]]
    options = '<option value="">all metrics</option>' + "".join(
        f'<option value="{esc(i)}">{esc(i)}</option>' for i in idents
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
        f"<th>{esc(old_name)} answer</th><th>{esc(new_name)} answer</th><th>prompt</th></tr>"
    )
    return (
        f"<h2>Flips: {esc(new_name)} against {esc(old_name)}</h2>"
        '<p class="muted">Documents scored by both runs, paired by doc_id (prompts checked by '
        "their hash); a flip is a document whose score changed.</p>"
        '<table id="flip-counts"><tr><th>metric</th><th>paired</th><th>right → wrong</th>'
        f"<th>wrong → right</th><th>paired test (one-sided, of a drop)</th></tr>{''.join(counts)}"
        f'</table>{controls}<table id="flips">{head}{"".join(rows)}</table>'
    )
