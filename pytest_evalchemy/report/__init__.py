"""Reporting a run: the summary and its table, the HTML and Markdown reports, SVG charts.
Pure (no pytest)."""
