"""Judging a result: thresholds and gates, the baseline, statistics, per-sample pairing.
Pure (no pytest, no requests); imports only ``core``."""
