"""``evalchemy report RUN_DIR...`` (also ``run_evalchemy.sh --report RUN_DIR...``): the HTML
report of one run, or a page comparing several. Reads results folders only; sends nothing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ..core.errors import UsageProblem
from ..judge.comparison import REFERENCES
from ..judge.gating import DEFAULT_CONFIDENCE
from ..report.compare_page import COMPARE_NAME, weight_warnings, write_comparison
from ..report.run_page import REPORT_NAME, write_report
from ..report.runs import RunInfo, history, load_run
from ..report.samples import flip_sets
from .parsing import EXIT_OK, EXIT_USAGE_ERROR, UsageParser

# pytest's exit statuses, as the rest of the front end uses them.


def add_options(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """The options the subcommand and ``run_evalchemy.sh --report`` share."""
    group.add_argument(
        "--history",
        metavar="DIR",
        help="compare every run folder under DIR (a results root), oldest first by started_at",
    )
    group.add_argument(
        "--out",
        metavar="FILE",
        help=f"where to write the page (default: {COMPARE_NAME} in the current folder, or in "
        f"DIR with --history; one run: RUN_DIR/{REPORT_NAME})",
    )
    group.add_argument(
        "--against",
        choices=REFERENCES,
        default="previous",
        help="what each run's deltas are against (default: previous)",
    )
    group.add_argument(
        "--confidence",
        type=float,
        default=DEFAULT_CONFIDENCE,
        metavar="C",
        help=f"confidence of the significance test and the intervals (default: {DEFAULT_CONFIDENCE})",
    )


def build_parser(prog: str = "evalchemy report") -> argparse.ArgumentParser:
    p = UsageParser(
        prog=prog,
        description="Write the HTML report of a run, or a page comparing several runs: each "
        "metric by run, its delta and whether the delta is significant (two-sample z-test on "
        "the standard errors), and a chart per metric over the runs; for two runs, the documents "
        "whose score flipped (paired by doc_id, with McNemar's exact test).",
    )
    p.add_argument(
        "runs", nargs="*", metavar="RUN_DIR", help="run folders (or their summary files), in order"
    )
    add_options(p)
    return p


def make_report(
    runs: Sequence[str],
    history_dir: str | None,
    out: str | None,
    *,
    against: str = "previous",
    confidence: float = DEFAULT_CONFIDENCE,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Write the page; print where. One run: its report; several: the comparison."""
    # Looked up now, not at import: a caller (or a test) may have replaced them.
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    try:
        if not 0 < confidence < 1:
            raise UsageProblem(f"--confidence: expected a number between 0 and 1, got {confidence}")
        found: list[RunInfo] = history(Path(history_dir)) if history_dir else []
        found += [load_run(Path(r)) for r in runs]
        if not found:
            raise UsageProblem("nothing to report: give run folders, or --history DIR")
        if len(found) == 1 and not history_dir:
            run = found[0]
            path = write_report(run.summary, run.folder, Path(out) if out else None)
            print(f"report of run {run.run_id}: {path}", file=stdout)
            return EXIT_OK
        default = (Path(history_dir) if history_dir else Path.cwd()) / COMPARE_NAME
        path = write_comparison(
            found, Path(out) if out else default, reference=against, confidence=confidence
        )
    except (UsageProblem, OSError) as exc:
        print(f"evalchemy report: error: {exc}", file=stderr)
        return EXIT_USAGE_ERROR
    print(f"comparison of {len(found)} runs: {path}", file=stdout)
    for line in weight_warnings(found, against):
        print(f"warning: {line}", file=stdout)
    if len(found) == 2:
        old, new = found
        print(f"flips of {new.run_id} against {old.run_id}:", file=stdout)
        for fs in flip_sets(new.summary, new.folder, old.summary, old.folder):
            if fs.pairing is None:
                print(f"  {fs.key} {fs.label}: not paired: {fs.reason}", file=stdout)
                continue
            t = fs.pairing.test
            print(
                f"  {fs.key} {fs.label}: {t.right_to_wrong} right→wrong, {t.wrong_to_right} "
                f"wrong→right of {t.n} ({t.method} p={t.p_value:.4g})",
                file=stdout,
            )
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = "evalchemy report") -> int:
    """The ``report`` subcommand of ``evalchemy``."""
    parser = build_parser(prog)
    ns = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return make_report(ns.runs, ns.history, ns.out, against=ns.against, confidence=ns.confidence)
