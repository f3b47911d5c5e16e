"""The CI gate: thresholds on metrics and drops against a baseline run, judged on the point
value or on its confidence interval. Imports no pytest."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

from ..core.config import PlannedItem, Threshold
from ..core.defaults import DEFAULT_CONFIDENCE, DEFAULT_MAX_DROP, DEFAULT_MAX_INVALID_SHARE
from ..core.record import ItemRecord, as_float, is_stderr, stderr_key
from ..core.samples import Rows
from . import statistics
from .baseline import Baseline, comparability_problems, higher_is_better
from .canary import ServedRun, different_weights
from .per_sample import Pairing, flip_lines, pair
from .statistics import Interval

GATE_MODES = ("point", "ci")
# Scores are fractions printed to 4 places: a drop of 0.0200000001 is a drop of 0.02.
_DROP_TOLERANCE = 1e-9
_NORMAL = NormalDist()


class NotLikeForLikeWarning(UserWarning):
    """An item's settings or task versions differ from the baseline's."""


@dataclass(frozen=True)
class GateSettings:
    """How checks are judged: ``point`` compares values, ``ci`` their confidence intervals."""

    mode: str = "point"
    confidence: float = DEFAULT_CONFIDENCE
    max_drop: float = DEFAULT_MAX_DROP
    baseline: Baseline | None = None
    # --evalchemy-max-invalid-share: replaces every task's max_invalid_share; None: the task's.
    max_invalid_share: float | None = None

    @property
    def z(self) -> float:
        """The two-sided normal quantile of ``confidence`` (1.96 at 0.95)."""
        return z_for(self.confidence)

    def to_dict(self) -> dict[str, Any]:
        """The summary's ``gate`` object (without the run's notes)."""
        return {
            "mode": self.mode,
            "confidence": self.confidence,
            "z": round(self.z, 6),
            "max_drop": self.max_drop,
            "baseline": str(self.baseline.path) if self.baseline else None,
            "baseline_run_id": self.baseline.run_id if self.baseline else None,
            # Only when given: a run without it records (and resumes with) the gate it had.
            **(
                {"max_invalid_share": self.max_invalid_share}
                if self.max_invalid_share is not None
                else {}
            ),
        }


@dataclass(frozen=True)
class Check:
    """The verdict on one lm-eval task's metric: a threshold or a drop against the baseline."""

    task: str
    metric: str
    value: float | None
    stderr: float | None
    bound: str  # ">= 0.55", "<= 2.0", or "0.7500 - 0.02" for a baseline
    passed: bool
    message: str = ""  # why it failed, or why a point miss passed under ci
    kind: str = "threshold"  # or "baseline"
    mode: str = "point"  # how it was judged: "point" or "ci"
    n: int | None = None  # documents behind the value
    interval: tuple[float, float] | None = None
    source: str = ""  # "config" or "command line" for a threshold
    baseline: float | None = None
    baseline_stderr: float | None = None
    delta: float | None = None  # value - baseline
    p_value: float | None = None  # one-sided, of the drop: the paired test's when paired
    interval_method: str | None = None  # "wilson", "normal" or "bootstrap"
    # The paired comparison with the baseline: n, right_to_wrong, wrong_to_right, p_value, method.
    pairing: dict[str, Any] | None = None
    unpaired_p_value: float | None = None  # the two-sample z-test's, beside the paired one
    flips: list[dict[str, Any]] | None = None  # the first flipped samples (doc id, answers)
    power: str = ""  # why the sample count cannot do this check's job, if it cannot

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Check:
        """A check as the summary stores it (JSON turns the interval into a list)."""
        interval = data.get("interval")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "interval": tuple(interval) if interval else None})

    @property
    def property_name(self) -> str:
        """Its name among the item's ``user_properties`` (and JUnit XML properties)."""
        suffix = ":baseline" if self.kind == "baseline" else ""
        return f"check:{self.task}:{self.metric}{suffix}"

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else f"FAIL {self.message}".rstrip()


@dataclass
class GateResult:
    """An item's checks, and what a reader should know about the comparison."""

    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also notes; raised as pytest warnings
    # Where the sample count cannot do the gate's job (also notes, not failures).
    power: list[str] = field(default_factory=list)
    # Why the answers the score comes from are not to be trusted (each fails the item).
    invalid: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def rejected(self) -> bool:
        """The item fails: a check missed, or too many of its answers are broken."""
        return bool(self.failed or self.invalid)

    def failure_message(self) -> str:
        """The record's message of a rejected item: why its answers are broken, then which
        checks failed."""
        return "; ".join([*self.invalid, *([self.summary_line()] if self.failed else [])])

    def summary_line(self) -> str:
        """``1 of 2 threshold check(s) and 1 of 2 baseline check(s) failed``."""
        parts = []
        for kind in ("threshold", "baseline"):
            of_kind = [c for c in self.checks if c.kind == kind]
            bad = [c for c in of_kind if not c.passed]
            if bad:
                parts.append(f"{len(bad)} of {len(of_kind)} {kind} check(s)")
        return " and ".join(parts) + " failed"


# ---------------------------------------------------------------- statistics


def z_for(confidence: float) -> float:
    """The two-sided normal quantile: an interval of ``value ± z·stderr`` covers ``confidence``."""
    return _NORMAL.inv_cdf(1 - (1 - confidence) / 2)


def confidence_interval(value: float, stderr: float, confidence: float) -> tuple[float, float]:
    """``value ± z·stderr`` as a pair (the comparison page's and the charts' form)."""
    interval = statistics.normal_interval(value, stderr, confidence)
    return interval.low, interval.high


# One-sided p of a two-sample z-test that a drop this large is luck.
drop_p_value = statistics.two_sample_p


def metric_interval(
    record: ItemRecord, task: str, metric: str, confidence: float
) -> Interval | None:
    """A metric's interval as the reports show it: the record's (Wilson, normal or bootstrap,
    computed when the item ran), Wilson again for a proportion asked at another confidence,
    else the normal one on its stderr."""
    stored = ((record.get("intervals") or {}).get(task) or {}).get(metric)
    values = (record.get("metrics") or {}).get(task) or {}
    value, stderr = as_float(values.get(metric)), as_float(values.get(stderr_key(metric)))
    if isinstance(stored, dict):
        if stored.get("confidence") == confidence:
            return Interval.from_dict(stored)
        n = _n_of(record, task)
        if stored.get("method") == "wilson" and n and value is not None:
            # A proportion asked at another confidence: the same count, another Wilson interval.
            return statistics.wilson_interval(round(value * n), n, confidence)
    if value is None or stderr is None:
        return None
    return statistics.normal_interval(value, stderr, confidence)


def _pct(confidence: float) -> str:
    return f"{confidence * 100:g}%"


def _n_of(record: ItemRecord, task: str) -> int | None:
    n = record.get("n_samples", {}).get(task, {}).get("effective")
    return n if isinstance(n, int) else None


# ---------------------------------------------------------------- thresholds


def _bound(th: Threshold) -> str:
    parts = []
    if th.min is not None:
        parts.append(f">= {th.min:g}")
    if th.max is not None:
        parts.append(f"<= {th.max:g}")
    return " and ".join(parts)


def _within(value: float, th: Threshold) -> bool:
    return (th.min is None or value >= th.min) and (th.max is None or value <= th.max)


def judge_threshold(
    task: str,
    metric: str,
    value: float,
    stderr: float | None,
    th: Threshold,
    gate: GateSettings,
    n: int | None = None,
    source: str = "config",
    interval: Interval | None = None,
) -> Check:
    """One threshold: on the value (``point``), or failing only when the whole interval lies
    on the wrong side (``ci``). ``interval`` is the metric's (Wilson for a proportion); without
    one, the normal interval on ``stderr``."""
    point_ok = _within(value, th)
    if interval is None and stderr is not None:
        interval = statistics.normal_interval(value, stderr, gate.confidence)
    stats = [f"n={n if n is not None else '?'}"]
    if interval is not None:
        stats.insert(0, f"{_pct(gate.confidence)} {interval.method} CI {interval.text()}")
        if stderr is not None:
            stats.insert(0, f"stderr {stderr:.4f}")
    miss = f"{value:.4f} misses {_bound(th)}"
    mode, ok, message = "point", point_ok, ""
    if gate.mode == "ci" and interval is None:
        # Without a stderr there is no interval: the point value decides, and the check says so.
        stats.insert(0, "no stderr, point comparison")
        message = "no stderr, point comparison"
    elif gate.mode == "ci" and interval is not None:
        lo, hi = interval.low, interval.high
        mode = "ci"
        ok = (th.min is None or hi >= th.min) and (th.max is None or lo <= th.max)
        if not ok:
            miss += ", and so does the whole interval"
        elif not point_ok:
            message = f"{miss}, but the interval reaches it ({', '.join(stats)})"
    if not ok:
        message = f"{miss} ({', '.join(stats)})"
    power = ""
    if mode == "ci" and interval is not None and interval.method == "wilson" and n:
        power = threshold_power(th, n, gate)
    return Check(
        task,
        metric,
        value,
        stderr,
        _bound(th),
        ok,
        message,
        power=power,
        mode=mode,
        n=n,
        interval=(interval.low, interval.high) if interval is not None else None,
        source=source,
        interval_method=interval.method if interval is not None else None,
    )


def _scope(
    overrides: Iterable[Threshold], item_names: set[str], lm_tasks: set[str]
) -> list[Threshold]:
    """The command-line thresholds that concern this item. ``TASK:`` names an lm-eval task
    (kept) or the item's key or benchmark (applies to all its lm-eval tasks); others are
    another item's business."""
    scoped = []
    for th in overrides:
        prefix, _, metric = th.metric.rpartition(":")
        if not prefix or prefix in lm_tasks:
            scoped.append(th)
        elif prefix in item_names:
            scoped.append(Threshold(metric, th.min, th.max))
    return scoped


def unmatched_overrides(overrides: Iterable[Threshold], names: set[str]) -> list[str]:
    """Command-line thresholds whose ``TASK:`` prefix names nothing in the plan."""
    out = []
    for th in overrides:
        prefix = th.metric.rpartition(":")[0]
        if prefix and prefix not in names:
            out.append(
                f"--evalchemy-threshold {th.metric} {_bound(th)}: no item, benchmark or lm-eval "
                f"task of the config is called {prefix!r} (fine if it is a subtask of a group)"
            )
    return out


def check_thresholds(
    metrics: dict[str, dict[str, Any]],
    thresholds: tuple[Threshold, ...],
    overrides: tuple[Threshold, ...] = (),
    *,
    gate: GateSettings | None = None,
    record: ItemRecord | None = None,
) -> list[Check]:
    """Compare ``metrics`` (``{task: {"acc,none": v}}``) with the config's ``thresholds`` and
    the command line's ``overrides`` (already scoped to the item). A threshold without a
    ``task:`` prefix applies to every lm-eval task that reports the metric; an override
    replaces the config's bound on the same task and metric."""
    gate = gate or GateSettings()
    record = record or {}
    checks: list[Check] = []
    chosen: dict[tuple[str, str], tuple[Threshold, str]] = {}
    for source, group in (("config", thresholds), ("command line", overrides)):
        for th in group:
            subtask, _, metric = th.metric.rpartition(":")
            targets = [subtask] if subtask else [t for t, m in metrics.items() if metric in m]
            if not targets:
                produced = sorted({k for m in metrics.values() for k in m if not is_stderr(k)})
                message = f"no lm-eval task reported {metric}; reported: {', '.join(produced) or 'nothing'}"
                checks.append(
                    Check("*", metric, None, None, _bound(th), False, message, source=source)
                )
            for task in targets:
                chosen[(task, metric)] = (th, source)  # a later source replaces an earlier one
    for (task, metric), (th, source) in chosen.items():
        values = metrics.get(task) or {}
        value = as_float(values.get(metric))
        if value is None:
            if task not in metrics:
                message = f"this item ran no lm-eval task {task}; it ran: {', '.join(metrics) or 'nothing'}"
            else:
                produced = sorted(k for k in values if not is_stderr(k))
                message = f"{task} did not report {metric}; it reported: {', '.join(produced) or 'nothing'}"
            checks.append(
                Check(task, metric, None, None, _bound(th), False, message, source=source)
            )
            continue
        stderr = as_float(values.get(stderr_key(metric)))
        interval = metric_interval(record, task, metric, gate.confidence)
        checks.append(
            judge_threshold(
                task, metric, value, stderr, th, gate, _n_of(record, task), source, interval
            )
        )
    return checks


# ---------------------------------------------------------------- baseline


def judge_drop(
    task: str,
    metric: str,
    value: float,
    stderr: float | None,
    base: float,
    base_stderr: float | None,
    max_drop: float,
    gate: GateSettings,
    *,
    higher_better: bool = True,
    n: int | None = None,
    base_n: int | None = None,
    pairing: Pairing | None = None,
    unpaired_why: str = "",
    binary: bool = False,
) -> Check:
    """A metric against its baseline: it fails when it got worse by more than ``max_drop``
    and, under ``ci``, only when the drop is significant: by the paired test on the same
    documents when ``pairing`` is given, else by the two-sample z-test on the two stderrs
    (``unpaired_why`` says why there was no pairing)."""
    drop = (base - value) if higher_better else (value - base)
    exceeds = drop > max_drop + _DROP_TOLERANCE
    stats = [f"n={n if n is not None else '?'} vs {base_n if base_n is not None else '?'}"]
    unpaired = None
    if stderr is not None and base_stderr is not None:
        unpaired = drop_p_value(drop, stderr, base_stderr)
        se = math.hypot(stderr, base_stderr)
        z = drop / se if se else math.copysign(math.inf, drop)
        stats.insert(0, f"two-sample z={z:.2f}, p={unpaired:.3g}")
    p = unpaired
    if pairing is not None:
        t = pairing.test
        p = t.p_value
        stats.insert(
            0,
            f"paired: {t.right_to_wrong} right→wrong, {t.wrong_to_right} wrong→right of "
            f"{t.n}, {t.method} p={t.p_value:.3g}",
        )
    elif unpaired_why and unpaired is not None:
        stats.insert(1, f"unpaired: {unpaired_why}")
    mode, message = gate.mode, ""
    if mode == "ci" and p is None:
        # No stderr, no samples, no test: the point drop decides, and the check says so.
        mode, message = "point", "no stderr, point comparison"
        stats.insert(0, message)
    significant = p is not None and p < 1 - gate.confidence
    ok = not exceeds or (mode == "ci" and not significant)
    worse = "dropped" if higher_better else "rose (lower is better)"
    detail = f"{worse} {drop:.4f} from {base:.4f} to {value:.4f}, more than {max_drop:g}"
    if not ok:
        message = f"{detail} ({', '.join(stats)})"
    elif exceeds:
        message = f"{detail}, but not significant at {_pct(gate.confidence)} ({', '.join(stats)})"
    sign = "-" if higher_better else "+"
    return Check(
        task,
        metric,
        value,
        stderr,
        f"{base:.4f} {sign} {max_drop:g}",
        ok,
        message,
        kind="baseline",
        mode=mode,
        n=n,
        baseline=base,
        baseline_stderr=base_stderr,
        delta=value - base,
        p_value=p,
        pairing=pairing.test.to_dict() if pairing is not None else None,
        unpaired_p_value=unpaired,
        flips=pairing.shown_flips() if pairing is not None else None,
        power=drop_power(
            base if higher_better else 1 - base,
            max_drop,
            gate,
            n=n,
            binary=binary or (pairing is not None and pairing.binary),
            pairing=pairing,
            stderrs=((stderr, n), (base_stderr, base_n)),
        ),
    )


# ---------------------------------------------------------------- sample sizes


def _cannot(n: int, what: str, gate: GateSettings, needs: str) -> str:
    return (
        f"{n} samples cannot {what} at {_pct(gate.confidence)} confidence with "
        f"{statistics.DEFAULT_POWER:.0%} power: that needs {needs} (evalchemy plan)"
    )


def threshold_power(th: Threshold, n: int, gate: GateSettings) -> str:
    """Under ``ci``, whether ``n`` samples of a proportion can fail a model ``max_drop``
    beyond the threshold (the whole interval must clear it); "" when they can."""
    d = gate.max_drop
    if d <= 0:
        return ""
    needs = []
    for bound, truth in ((th.min, (th.min or 0) - d), (th.max, (th.max or 0) + d)):
        if bound is not None and 0 <= truth <= 1:
            needs.append(statistics.samples_threshold(truth, d, gate.confidence))
    need = max(needs, default=0)
    if n >= need:
        return ""
    return _cannot(n, f"fail a model {d:g} beyond {_bound(th)}", gate, f"{need} samples")


def drop_power(
    base: float,
    max_drop: float,
    gate: GateSettings,
    *,
    n: int | None,
    binary: bool,
    pairing: Pairing | None,
    stderrs: tuple[tuple[float | None, int | None], ...],
) -> str:
    """Whether ``n`` samples can tell a drop of ``max_drop`` from ``base`` from luck (the
    test the check uses: paired at the runs' discordance, else two-sample); "" when they can.
    ``base`` is on the higher-is-better scale."""
    if not n or max_drop <= 0:
        return ""
    try:
        if binary:
            unpaired = statistics.samples_unpaired(base, max_drop, gate.confidence)
        else:
            # Per-sample variances from lm-eval's stderrs (stderr² · n), averaged over the runs.
            known = [se * se * m for se, m in stderrs if se is not None and m]
            if not known or not any(known):
                return ""
            variance = sum(known) / len(known)
            unpaired = statistics.samples_unpaired(
                base, max_drop, gate.confidence, variance=variance
            )
    except ValueError:
        return ""  # a proportion that cannot drop that far
    what = f"tell a drop of {max_drop:g} from luck"
    if pairing is not None and pairing.binary:
        t = pairing.test
        # The runs' own share of flipped documents; at least the drop (all flips one way).
        discordance = min(1.0, max((t.right_to_wrong + t.wrong_to_right) / t.n, max_drop))
        paired = statistics.samples_paired(max_drop, discordance, gate.confidence)
        if n >= paired:
            return ""
        return _cannot(
            n,
            what,
            gate,
            f"{paired} paired at this discordance {discordance:.3f}, {unpaired} unpaired",
        )
    if n >= unpaired:
        return ""
    return _cannot(n, what, gate, f"{unpaired} per run unpaired")


def _wanted(metric: str, listed: tuple[str, ...]) -> bool:
    # The same rule as the score table: "acc" picks "acc,none", "exact_match" both filters.
    return metric in listed or metric.partition(",")[0] in listed


def _max_drop_for(task: str, metric: str, per_metric: dict[str, float], default: float) -> float:
    return per_metric.get(f"{task}:{metric}", per_metric.get(metric, default))


def _is_wilson(record: ItemRecord, task: str, metric: str) -> bool:
    stored = ((record.get("intervals") or {}).get(task) or {}).get(metric) or {}
    return stored.get("method") == "wilson"


def check_baseline(
    item: PlannedItem,
    record: ItemRecord,
    base: ItemRecord,
    gate: GateSettings,
    thresholded: set[tuple[str, str]] | None = None,
    samples: dict[str, Rows] | None = None,
    base_samples: dict[str, Rows] | None = None,
) -> tuple[list[Check], list[str]]:
    """Drops of ``record``'s metrics against the baseline's record ``base`` of the same item,
    lm-eval task by lm-eval task. Compared: the task's ``metrics`` when it lists some (plus
    any thresholded one), else every metric both runs report. With both runs' ``samples``
    (``{lm_eval_task: rows}``) each metric is paired by document."""
    checks: list[Check] = []
    notes: list[str] = []
    per_metric = dict(item.task.max_drop)
    base_metrics = base.get("metrics", {})
    samples, base_samples = samples or {}, base_samples or {}
    if not samples or not base_samples:
        which = " and ".join(
            w for w, s in (("this run", samples), ("the baseline", base_samples)) if not s
        )
        notes.append(
            f"{item.key}: {which} logged no samples, so drops are judged by the two-sample "
            "z-test on the stderrs, not paired by document (make the baseline run with "
            "--evalchemy-log-samples)"
        )
    for task, values in record.get("metrics", {}).items():
        old = base_metrics.get(task)
        if old is None:
            notes.append(f"{item.key}: lm-eval task {task} is not in the baseline")
            continue
        for metric, raw in values.items():
            value = as_float(raw)
            if value is None or is_stderr(metric):
                continue
            if item.task.metrics and not (
                _wanted(metric, item.task.metrics) or (task, metric) in (thresholded or ())
            ):
                continue
            base_value = as_float(old.get(metric))
            if base_value is None:
                notes.append(f"{item.key}: {task}:{metric} is not in the baseline")
                continue
            up = higher_is_better((record, base), task, metric)
            pairing, why = None, ""
            if samples and base_samples:
                pairing, why = pair(
                    samples.get(task, []), base_samples.get(task, []), metric, higher_better=up
                )
                if pairing is None:
                    notes.append(
                        f"{item.key}: {task}:{metric} not paired with the baseline: {why}; "
                        "judged by the two-sample z-test"
                    )
            checks.append(
                judge_drop(
                    task,
                    metric,
                    value,
                    as_float(values.get(stderr_key(metric))),
                    base_value,
                    as_float(old.get(stderr_key(metric))),
                    _max_drop_for(task, metric, per_metric, gate.max_drop),
                    gate,
                    higher_better=up,
                    n=_n_of(record, task),
                    base_n=_n_of(base, task),
                    pairing=pairing,
                    unpaired_why=why,
                    binary=_is_wilson(record, task, metric) or _is_wilson(base, task, metric),
                )
            )
    return checks, notes


# ---------------------------------------------------------------- validity

# The kinds of broken answers a record's ``validity`` counts (core.record.VALIDITY_KINDS), in
# the order they are reported: what was counted, and what went wrong with it.
_BROKEN: dict[str, tuple[str, str]] = {
    "length": ("generation answers", "ended at max_tokens"),
    "unclosed_thinking": ("reasoning answers", "never closed their thinking"),
    "cut_prompts": ("prompts", "were cut to fit the context"),
}


def max_invalid_share(item: PlannedItem, gate: GateSettings) -> float:
    """The item's limit: the run-wide option, else the task's key, else the default."""
    if gate.max_invalid_share is not None:
        return gate.max_invalid_share
    if item.task.max_invalid_share is not None:
        return item.task.max_invalid_share
    return DEFAULT_MAX_INVALID_SHARE


def _detail(kind: str, entry: dict[str, Any], settings: dict[str, Any]) -> tuple[str, str]:
    """What a broken kind's sentence adds after the count, and what to raise."""
    if kind == "length":
        tokens, replayed = entry.get("max_tokens"), entry.get("replayed")
        budget = " or thinking_budget" if settings.get("reasoning") else ""
        detail = f" ({tokens})" if tokens else ""
        if replayed:
            detail += f" ({replayed} more, replayed from the request cache, have no finish reason)"
        return detail, f"raise max_gen_toks in gen_kwargs{budget} or max_invalid_share"
    if kind == "unclosed_thinking":
        end = settings.get("think_end_token")
        return (
            f" (no {end})" if end else "",
            "raise thinking_budget or max_invalid_share",
        )
    length = settings.get("max_length")
    return (
        f" (max_length {length})" if length else "",
        "serve a longer context (vLLM --max-model-len), lower num_fewshot or max_gen_toks, "
        "or raise max_invalid_share",
    )


def validity_problems(
    validity: dict[str, dict[str, Any]], limit: float, settings: dict[str, Any] | None = None
) -> list[str]:
    """Why an item's score cannot be trusted: each kind of its ``validity`` whose share of
    broken answers is above ``limit``, in one sentence that says what to raise (``settings``:
    the record's)."""
    problems = []
    for kind, (counted, broken) in _BROKEN.items():
        entry = validity.get(kind)
        if not entry or entry["share"] <= limit:
            continue
        detail, fix = _detail(kind, entry, settings or {})
        problems.append(
            f"{entry['count']} of {entry['of']} {counted} ({entry['share']:.0%}) {broken}"
            f"{detail}; {fix}"
        )
    return problems


# ---------------------------------------------------------------- an item's gate


def gate_item(
    item: PlannedItem,
    record: ItemRecord,
    overrides: tuple[Threshold, ...],
    gate: GateSettings,
    samples: dict[str, Rows] | None = None,
    served: ServedRun | None = None,
) -> GateResult:
    """Every check of an item that ran: its thresholds (the command line's replacing the
    config's), then its drops against the baseline (paired by document when both runs
    logged ``samples``), with notes on the comparison and on what the sample count allows,
    and the shares of broken answers above the item's ``max_invalid_share``. ``served``: this
    run's model and canary, against the baseline's (other weights under the same model name
    are not like for like)."""
    metrics = record.get("metrics", {})
    names = {item.benchmark, item.task.key, item.key}
    scoped = _scope(overrides, names, {*item.task.tasks, *metrics})
    result = GateResult(
        check_thresholds(metrics, item.task.thresholds, tuple(scoped), gate=gate, record=record)
    )
    baseline = gate.baseline
    base = baseline.record(item.key) if baseline else None
    if baseline is not None and base is not None:
        problems = comparability_problems(record, base)
        weights = different_weights(baseline.served, served) if served is not None else None
        if weights:
            problems.append(weights)
        if problems:
            warning = (
                f"{item.key}: not like for like with the baseline "
                f"({baseline.run_id}): {'; '.join(problems)}"
            )
            result.warnings.append(warning)
            result.notes.append(warning)
        thresholded = {(c.task, c.metric) for c in result.checks}
        checks, notes = check_baseline(
            item, record, base, gate, thresholded, samples, baseline.samples(item.key)
        )
        result.checks.extend(checks)
        result.notes.extend(notes)
    # The controller notes items only one run has.
    for check in result.checks:
        if check.power:
            what = "baseline" if check.kind == "baseline" else "threshold"
            result.power.append(f"{item.key}: {check.task}:{check.metric} {what}: {check.power}")
    result.notes.extend(result.power)
    result.invalid = validity_problems(
        record.get("validity") or {}, max_invalid_share(item, gate), record.get("settings")
    )
    return result


# ---------------------------------------------------------------- reports


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_checks(checks: Iterable[Check]) -> str:
    """A small table of checks for a failure report, each check's explanation below it."""
    checks = list(checks)
    rows = [("task", "metric", "value", "stderr", "threshold / baseline", "verdict")]
    for c in checks:
        verdict = "pass" if c.passed else "FAIL"
        rows.append((c.task, c.metric, _cell(c.value), _cell(c.stderr), c.bound, verdict))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip()
        for row in rows
    ]
    for c in checks:
        what = "baseline" if c.kind == "baseline" else "threshold"
        if c.message:
            lines.append(f"{c.task}:{c.metric} {what}: {c.message}")
        if c.pairing and (c.pairing["right_to_wrong"] or c.pairing["wrong_to_right"]):
            lines.extend(flip_lines(c.pairing, c.flips or ()))
        if c.power:
            lines.append(f"{c.task}:{c.metric} {what}: warning: {c.power}")
    return "\n".join(lines)


def check_properties(checks: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(check:<task>:<metric>[:baseline], "pass" | "FAIL ...")`` pairs for user_properties."""
    return [(c.property_name, c.verdict) for c in map(Check.from_dict, checks)]
