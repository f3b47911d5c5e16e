"""Small inline SVG charts for the HTML reports: scores with their confidence intervals, and a
metric over several runs. Pure string building (no pytest, no plotting library), so a report
opens offline and the project carries no charting dependency."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

_FONT = 'font-family="system-ui, sans-serif" font-size="12"'


@dataclass(frozen=True)
class Estimate:
    """A value with its confidence interval (``low``/``high`` None without a stderr)."""

    label: str
    value: float
    low: float | None = None
    high: float | None = None
    css_class: str = ""  # e.g. the item's status, for colour


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _num(x: float) -> str:
    return f"{x:.1f}"


def domain(values: Sequence[float], extents: Sequence[float] = ()) -> tuple[float, float]:
    """The axis range: 0-1 when every value is a fraction (scores read best on their full
    scale; an interval that passes 0 or 1 is clipped), else the range of the values and
    their intervals (``extents``) with a little room."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    if min(finite) >= 0 and max(finite) <= 1:
        return 0.0, 1.0
    finite += [v for v in extents if math.isfinite(v)]
    lo, hi = min(finite), max(finite)
    if lo == hi:
        return lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """``count`` + 1 evenly spaced tick values from ``lo`` to ``hi``."""
    return [lo + (hi - lo) * i / count for i in range(count + 1)]


def _tick_label(value: float, lo: float, hi: float) -> str:
    return f"{value:.2f}" if hi - lo <= 10 else f"{value:.0f}"


def interval_chart(rows: Sequence[Estimate], *, title: str = "", width: int = 760) -> str:
    """One horizontal row per estimate: a dot at the value and a whisker over its interval."""
    if not rows:
        return ""
    # Room for the longest label (about 7 px a character at 12 px), within reason.
    label_w = min(max(120, 7 * max(len(r.label) for r in rows) + 16), width // 2)
    row_h, top, bottom = 22, 28 if title else 8, 30
    plot_w = width - label_w - 20
    height = top + row_h * len(rows) + bottom
    lo, hi = domain(
        [r.value for r in rows], [v for r in rows for v in (r.low, r.high) if v is not None]
    )

    def x(v: float) -> float:
        # Intervals can leave the scale (a score ± 1.96·stderr may pass 1): clip to the plot.
        return label_w + plot_w * (min(max(v, lo), hi) - lo) / (hi - lo)

    parts = [
        f'<svg class="chart" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" {_FONT}>'
    ]
    if title:
        parts.append(f'<text x="0" y="16" font-weight="bold">{_esc(title)}</text>')
    axis_y = top + row_h * len(rows)
    for t in ticks(lo, hi):
        parts.append(
            f'<line x1="{_num(x(t))}" y1="{top}" x2="{_num(x(t))}" y2="{axis_y}" '
            'stroke="#ddd" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_num(x(t))}" y="{axis_y + 16}" text-anchor="middle" fill="#555">'
            f"{_tick_label(t, lo, hi)}</text>"
        )
    for i, r in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        parts.append(f'<g class="estimate {_esc(r.css_class)}" data-label="{_esc(r.label)}">')
        parts.append(
            f'<text x="{label_w - 8}" y="{_num(cy + 4)}" text-anchor="end">{_esc(r.label)}</text>'
        )
        if r.low is not None and r.high is not None:
            parts.append(
                f'<line class="ci" x1="{_num(x(r.low))}" y1="{_num(cy)}" x2="{_num(x(r.high))}" '
                f'y2="{_num(cy)}" stroke="#4a6fa5" stroke-width="2"/>'
            )
            for end in (r.low, r.high):
                parts.append(
                    f'<line x1="{_num(x(end))}" y1="{_num(cy - 5)}" x2="{_num(x(end))}" '
                    f'y2="{_num(cy + 5)}" stroke="#4a6fa5" stroke-width="2"/>'
                )
        interval = (
            f" [{r.low:.4f}, {r.high:.4f}]" if r.low is not None and r.high is not None else ""
        )
        parts.append(
            f'<circle cx="{_num(x(r.value))}" cy="{_num(cy)}" r="5" fill="#1f3b63">'
            f"<title>{_esc(r.label)}: {r.value:.4f}{interval}</title></circle>"
        )
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    title: str,
    labels: Sequence[str],
    points: Sequence[Estimate | None],
    *,
    width: int = 520,
    height: int = 240,
) -> str:
    """A metric over runs: x is the run (in the order given), y the value with its interval;
    a run without the metric leaves a gap in the line."""
    left, right, top, bottom = 52, 16, 28, 54
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = domain(
        [p.value for p in points if p],
        [v for p in points if p for v in (p.low, p.high) if v is not None],
    )
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))

    parts = [
        f'<svg class="chart line-chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" {_FONT}>',
        f'<text x="{left}" y="16" font-weight="bold">{_esc(title)}</text>',
    ]
    for t in ticks(lo, hi, 4):
        parts.append(
            f'<line x1="{left}" y1="{_num(y(t))}" x2="{width - right}" y2="{_num(y(t))}" '
            'stroke="#ddd" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{_num(y(t) + 4)}" text-anchor="end" fill="#555">'
            f"{_tick_label(t, lo, hi)}</text>"
        )
    for i, label in enumerate(labels):
        # Run ids are long: cut the axis label, keep the whole id in the tooltip.
        short = label if len(label) <= 16 else label[:15] + "…"
        parts.append(
            f'<text x="{_num(x(i))}" y="{height - bottom + 18}" text-anchor="middle" '
            f'fill="#555"><title>{_esc(label)}</title>{_esc(short)}</text>'
        )
    segments: list[list[str]] = [[]]
    for i, p in enumerate(points):
        if p is None:
            segments.append([])
            continue
        segments[-1].append(f"{_num(x(i))},{_num(y(p.value))}")
    for seg in segments:
        if len(seg) > 1:
            parts.append(
                f'<polyline points="{" ".join(seg)}" fill="none" stroke="#4a6fa5" '
                'stroke-width="2"/>'
            )
    for i, p in enumerate(points):
        if p is None:
            continue
        if p.low is not None and p.high is not None:
            parts.append(
                f'<line class="ci" x1="{_num(x(i))}" y1="{_num(y(p.low))}" x2="{_num(x(i))}" '
                f'y2="{_num(y(p.high))}" stroke="#9db3d3" stroke-width="6" '
                'stroke-linecap="round"/>'
            )
        parts.append(
            f'<circle class="point {_esc(p.css_class)}" cx="{_num(x(i))}" cy="{_num(y(p.value))}" '
            f'r="4.5" fill="#1f3b63"><title>{_esc(labels[i])}: {p.value:.4f}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)
