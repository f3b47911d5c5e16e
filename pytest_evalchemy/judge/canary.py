"""Were two runs served the same weights? The endpoint check scores one fixed text (the
canary, ``endpoint_check.canary`` of the summary); two runs that name the same model but
whose canaries differ beyond numerical noise were answered by different weights, and their
scores are not like for like. Pure; imports only ``core``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The same weights score the same text a little differently from run to run: GPU kernels in
# bf16 are not bitwise reproducible across batch shapes, replicas and restarts, which moves a
# sum of a few dozen prompt logprobs by about 1e-3 of its size. Other weights (another
# checkpoint, a fine-tune, a quantization) move it by far more. Relative 1e-3 of the larger
# sum, but never below 0.05 nats: a short or confident text has a small sum, and a relative
# bound alone would call rounding a change.
CANARY_RELATIVE_TOLERANCE = 1e-3
CANARY_ABSOLUTE_TOLERANCE = 0.05


@dataclass(frozen=True)
class ServedRun:
    """What a run says of the weights that answered it: its name, the model it names and
    its canary (``endpoint_check.canary``; None: not measured, or an older summary)."""

    name: str
    model: str | None
    canary: Mapping[str, Any] | None

    @classmethod
    def of_summary(cls, summary: Mapping[str, Any], name: str | None = None) -> ServedRun:
        """The run a summary describes, named ``name`` (default: its run id)."""
        check = summary.get("endpoint_check")
        canary = check.get("canary") if isinstance(check, Mapping) else None
        return cls(
            name or str(summary.get("run_id") or "?"),
            summary.get("model"),
            canary if isinstance(canary, Mapping) else None,
        )


def _sum_of(canary: Mapping[str, Any] | None) -> float | None:
    value = canary.get("logprob_sum") if canary is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def tolerance(a: float, b: float) -> float:
    """How far two canary sums of the same weights may lie apart."""
    return max(CANARY_RELATIVE_TOLERANCE * max(abs(a), abs(b)), CANARY_ABSOLUTE_TOLERANCE)


def _shown(a: float, b: float) -> tuple[str, str]:
    """The two sums with as few decimals as tell them apart (one at least)."""
    for places in range(1, 7):
        left, right = f"{a:.{places}f}", f"{b:.{places}f}"
        if left != right:
            break
    return left, right


def different_weights(a: ServedRun, b: ServedRun) -> str | None:
    """The line saying that ``a`` and ``b`` name the same model but were served different
    weights; None when they name different models, when either has no canary, when the
    canaries are of different texts, or when their sums agree within the tolerance."""
    if a.model is None or a.model != b.model or a.canary is None or b.canary is None:
        return None
    sha = a.canary.get("text_sha256")
    if not isinstance(sha, str) or sha != b.canary.get("text_sha256"):
        return None
    x, y = _sum_of(a.canary), _sum_of(b.canary)
    if x is None or y is None:
        return None
    # The same text in another token count: another tokenizer, so other weights too.
    same_tokens = a.canary.get("tokens") == b.canary.get("tokens")
    if same_tokens and abs(x - y) <= tolerance(x, y):
        return None
    left, right = _shown(x, y)
    return (
        f"runs {a.name} and {b.name} name the same model {a.model} but their canaries differ "
        f"(logprob sum {left} vs {right}): they served different weights"
    )


def weight_changes(runs: Sequence[ServedRun], reference: str = "previous") -> list[str]:
    """``different_weights`` of each run against the one before it (``reference="previous"``)
    or against the first run (``"first"``), as the comparison's deltas are taken."""
    lines = []
    for i in range(1, len(runs)):
        line = different_weights(runs[0 if reference == "first" else i - 1], runs[i])
        if line:
            lines.append(line)
    return lines
