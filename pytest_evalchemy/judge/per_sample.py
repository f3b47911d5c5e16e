"""lm-eval's logged samples, read for the gate: per-sample scores, the intervals they allow,
and two runs paired document by document (a prompt hash check, the flips, the paired test).
Imports no pytest."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.record import as_float, is_stderr, split_metric, stderr_key
from ..core.samples import Rows, Sample, parse_sample
from .statistics import (
    Interval,
    PairedTest,
    binary_count,
    bootstrap_interval,
    is_binary,
    normal_interval,
    paired_binary,
    paired_continuous,
    wilson_interval,
)

# Flipped samples a check entry (and the terminal) shows; the HTML report shows them all.
FLIPS_SHOWN = 5
RIGHT_TO_WRONG = "right_to_wrong"
WRONG_TO_RIGHT = "wrong_to_right"


def _score(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def scores(rows: Rows, metric: str) -> dict[Any, tuple[float, dict[str, Any]]]:
    """``{doc_id: (score, row)}`` of ``metric`` (``"acc,none"``: the ``acc`` value of the rows
    of filter ``none``); rows without a numeric score (a corpus-level BLEU) are left out."""
    name, flt = split_metric(metric)
    out = {}
    for row in rows:
        if str(row.get("filter") or "none") != (flt or "none"):
            continue
        value = _score(row, name)
        if value is not None:
            out[row.get("doc_id")] = (value, row)
    return out


# ---------------------------------------------------------------- intervals


def _aggregations(results: dict[str, Any], task: str) -> dict[str, str]:
    found = {}
    for entry in (results.get("configs") or {}).get(task, {}).get("metric_list") or []:
        if isinstance(entry, dict) and isinstance(entry.get("aggregation"), str):
            found[entry["metric"]] = entry["aggregation"]
    return found


def metric_interval(
    value: float,
    stderr: float | None,
    n: int | None,
    confidence: float,
    *,
    per_sample: list[float] | None = None,
    aggregation: str | None = None,
) -> Interval | None:
    """The interval of one metric: Wilson for a mean of 0/1 scores (told from the logged
    scores, or from the aggregation without them), normal on lm-eval's stderr otherwise,
    a bootstrap of the logged scores where lm-eval has no stderr."""
    if per_sample:
        if aggregation in (None, "mean") and is_binary(per_sample):
            return wilson_interval(int(sum(per_sample)), len(per_sample), confidence)
    elif n is not None:
        count = binary_count(value, n, stderr, aggregation)
        if count is not None:
            return wilson_interval(count, n, confidence)
    if stderr is not None:
        return normal_interval(value, stderr, confidence)
    if per_sample and aggregation in (None, "mean"):
        return bootstrap_interval(per_sample, confidence)
    return None


def run_intervals(
    metrics: dict[str, dict[str, Any]],
    results: dict[str, Any],
    samples: dict[str, Rows],
    confidence: float,
) -> dict[str, dict[str, Interval]]:
    """``{lm_eval_task: {metric: Interval}}`` of an item's metrics (``metrics`` as the record
    keeps them, ``results`` lm-eval's, ``samples`` the logged rows by task)."""
    out: dict[str, dict[str, Interval]] = {}
    for task, values in metrics.items():
        aggregations = _aggregations(results, task)
        n = ((results.get("n-samples") or {}).get(task) or {}).get("effective")
        for metric, raw in values.items():
            value = as_float(raw)
            if value is None or is_stderr(metric):
                continue
            name = split_metric(metric)[0]
            logged = [s for s, _ in scores(samples.get(task, []), metric).values()]
            interval = metric_interval(
                value,
                as_float(values.get(stderr_key(metric))),
                n if isinstance(n, int) else None,
                confidence,
                per_sample=logged or None,
                aggregation=aggregations.get(name),
            )
            if interval is not None:
                out.setdefault(task, {})[metric] = interval
    return out


# ---------------------------------------------------------------- pairing


@dataclass(frozen=True)
class Flip:
    """A document whose score changed between the baseline and this run."""

    doc_id: Any
    direction: str  # RIGHT_TO_WRONG (worse now) or WRONG_TO_RIGHT
    before: float
    after: float
    metric: str  # "acc_norm,none": the answers shown are the choices this metric scored
    old: dict[str, Any] = field(repr=False)  # the baseline's sample row
    new: dict[str, Any] = field(repr=False)  # this run's

    def samples(self, task: str = "") -> tuple[Sample, Sample]:
        """The baseline's and this run's sample, each answering with the metric's own choice
        (acc_norm's length-normalised pick, not acc's)."""
        name = split_metric(self.metric)[0]
        return parse_sample(self.old, task, name), parse_sample(self.new, task, name)

    def to_dict(self) -> dict[str, Any]:
        """What a check entry keeps of it: doc id, target, the two answers."""
        old, new = self.samples()
        return {
            "doc_id": self.doc_id,
            "direction": self.direction,
            "target": new.target,
            "old_answer": old.answer,
            "new_answer": new.answer,
        }


@dataclass(frozen=True)
class Pairing:
    """Two runs' samples of one metric paired by doc_id: the paired test and every flip."""

    test: PairedTest
    flips: list[Flip]
    binary: bool

    def shown_flips(self, limit: int = FLIPS_SHOWN) -> list[dict[str, Any]]:
        # Right to wrong first: that is what a person debugging a drop reads.
        ordered = sorted(self.flips, key=lambda f: f.direction != RIGHT_TO_WRONG)
        return [f.to_dict() for f in ordered[:limit]]


def pair(
    now: Rows, base: Rows, metric: str, *, higher_better: bool = True
) -> tuple[Pairing | None, str]:
    """This run's and the baseline's samples of ``metric`` paired by doc_id, or None and the
    reason they cannot be: no samples, other documents, or other prompts (lm-eval's
    ``prompt_hash``; a changed template or few-shot set makes the scores incomparable one to
    one)."""
    mine, theirs = scores(now, metric), scores(base, metric)
    if not mine or not theirs:
        which = "this run" if not mine else "the baseline"
        return None, f"{which} logged no samples of {metric}"
    if set(mine) != set(theirs):
        only_new, only_old = len(set(mine) - set(theirs)), len(set(theirs) - set(mine))
        return None, (
            f"the runs scored different documents ({only_new} only in this run, {only_old} "
            "only in the baseline)"
        )
    docs = sorted(mine, key=lambda d: (str(type(d)), d))
    differ = [d for d in docs if mine[d][1].get("prompt_hash") != theirs[d][1].get("prompt_hash")]
    if differ:
        return None, (
            f"the prompts differ on {len(differ)} of {len(docs)} documents (first: doc "
            f"{differ[0]}): a changed template, description or few-shot set"
        )
    sign = 1.0 if higher_better else -1.0
    before = [sign * theirs[d][0] for d in docs]
    after = [sign * mine[d][0] for d in docs]
    binary = is_binary([theirs[d][0] for d in docs] + [mine[d][0] for d in docs])
    if binary and not higher_better:
        # A 0/1 metric where 0 is good: "right" is 0, so count on the flipped scale.
        before = [1 + b for b in before]
        after = [1 + a for a in after]
    test = paired_binary(before, after) if binary else paired_continuous(before, after)
    flips = [
        Flip(
            d,
            RIGHT_TO_WRONG if b > a else WRONG_TO_RIGHT,
            theirs[d][0],
            mine[d][0],
            metric,
            theirs[d][1],
            mine[d][1],
        )
        for d, b, a in zip(docs, before, after, strict=True)
        if b != a
    ]
    return Pairing(test, flips, binary), ""


def flip_lines(pairing: dict[str, Any], flips: Iterable[dict[str, Any]]) -> list[str]:
    """The terminal's lines of a check's pairing: the counts, then the flipped samples."""
    lines = [
        f"  paired on {pairing['n']} documents: {pairing['right_to_wrong']} right→wrong, "
        f"{pairing['wrong_to_right']} wrong→right, {pairing['method']} p={pairing['p_value']:.4g}"
    ]
    for f in flips:
        arrow = "right→wrong" if f["direction"] == RIGHT_TO_WRONG else "wrong→right"
        lines.append(
            f"    doc {f['doc_id']} ({arrow}): target {f['target']!r}, was "
            f"{f['old_answer']!r}, now {f['new_answer']!r}"
        )
    return lines
