"""``evalchemy plan``: how many samples a gate needs to find a drop, unpaired and paired.
Sends nothing and reads no files."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from ..judge.gating import DEFAULT_CONFIDENCE, DEFAULT_MAX_DROP
from ..judge.statistics import DEFAULT_POWER, samples_paired, samples_unpaired
from .parsing import EXIT_OK, EXIT_USAGE_ERROR, UsageParser

# Shares of flipped documents shown when --paired-discordance is not given.
DISCORDANCES = (0.05, 0.1, 0.2, 0.3)


def build_parser(prog: str = "evalchemy plan") -> argparse.ArgumentParser:
    p = UsageParser(
        prog=prog,
        description="The number of samples a gate needs to tell a drop of --drop from luck at "
        "--confidence (the gate's one-sided test) with --power: unpaired (two-sample z-test "
        "on the two runs' stderrs, samples per run) and paired (McNemar's exact test on the "
        "same documents, for a share --paired-discordance of documents that flip).",
    )
    p.add_argument("--metric", default="acc", help="the metric's name, for the output (acc)")
    p.add_argument(
        "--value", type=float, required=True, help="the baseline's value, a proportion, e.g. 0.7"
    )
    p.add_argument(
        "--drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        help=f"the drop to detect, e.g. the gate's max_drop (default {DEFAULT_MAX_DROP})",
    )
    p.add_argument(
        "--paired-discordance",
        type=float,
        metavar="PSI",
        help="share of documents whose score flips between the runs, either way (a past "
        "pair of runs shows it: `evalchemy report RUN_A RUN_B`, flips / n); default: a table",
    )
    p.add_argument(
        "--sd",
        type=float,
        help="per-sample standard deviation for a metric that is not a proportion "
        "(lm-eval's stderr × sqrt(n)); unpaired only",
    )
    p.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    p.add_argument("--power", type=float, default=DEFAULT_POWER)
    return p


def plan(
    metric: str,
    value: float,
    drop: float,
    *,
    discordance: float | None = None,
    sd: float | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    power: float = DEFAULT_POWER,
) -> list[str]:
    """The lines ``evalchemy plan`` prints; ValueError on numbers that make no sense."""
    for name, number in (("--confidence", confidence), ("--power", power)):
        if not 0 < number < 1:
            raise ValueError(f"{name}: expected a number between 0 and 1, got {number:g}")
    if drop <= 0:
        raise ValueError(f"--drop: expected a positive number, got {drop:g}")
    if sd is not None and sd <= 0:
        raise ValueError(f"--sd: expected a positive number, got {sd:g}")
    if sd is None and not (value - drop >= 0 and value <= 1):
        raise ValueError(
            f"--value {value:g} --drop {drop:g}: a proportion and the value it drops to must be "
            "between 0 and 1 (for another metric give --sd)"
        )
    if discordance is not None and not drop <= discordance <= 1:
        raise ValueError(
            f"--paired-discordance: expected a share between the drop {drop:g} and 1 (a drop "
            f"of {drop:g} flips at least that share of documents), got {discordance:g}"
        )
    variance = sd * sd if sd is not None else None
    unpaired = samples_unpaired(value, drop, confidence, power, variance=variance)
    lines = [
        f"{metric} at {value:g}: samples to detect a drop of {drop:g} at {confidence:g} "
        f"confidence (one-sided) with {power:.0%} power",
        f"  unpaired (two-sample z-test, per run): {unpaired}",
    ]
    if sd is not None:
        return lines
    if discordance is not None:
        paired = samples_paired(drop, discordance, confidence, power)
        lines.append(f"  paired (McNemar exact, discordance {discordance:g}): {paired}")
        return lines
    for psi in DISCORDANCES:
        if psi >= drop:
            paired = samples_paired(drop, psi, confidence, power)
            lines.append(f"  paired (McNemar exact, discordance {psi:g}): {paired}")
    lines.append(
        "  discordance: the share of documents that flip between the two runs "
        "(--paired-discordance; `evalchemy report RUN_A RUN_B` counts them)"
    )
    return lines


def main(
    argv: Sequence[str] | None = None,
    prog: str = "evalchemy plan",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The ``plan`` subcommand of ``evalchemy``."""
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    ns = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        lines = plan(
            ns.metric,
            ns.value,
            ns.drop,
            discordance=ns.paired_discordance,
            sd=ns.sd,
            confidence=ns.confidence,
            power=ns.power,
        )
    except ValueError as exc:
        print(f"{prog}: error: {exc}", file=stderr)
        return EXIT_USAGE_ERROR
    print("\n".join(lines), file=stdout)
    return EXIT_OK
