"""The gate's statistics: intervals of a metric, paired and unpaired tests of a drop, and the
sample sizes a gate needs. Pure functions of numbers (scipy's distributions, no hand-rolled
ones); imports no pytest and knows nothing of lm-eval's files."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

# The power every sample-size figure is computed for: the usual 80%.
DEFAULT_POWER = 0.8
# Bootstrap resamples and the fixed seed that makes a run's interval reproducible.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# lm-eval writes means to full float precision; 1e-6 tells a count from a fraction.
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Interval:
    """A confidence interval of a metric, as the summary's ``intervals`` stores it."""

    low: float
    high: float
    method: str  # "wilson", "normal" or "bootstrap"
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        return cls(float(data["low"]), float(data["high"]), str(data["method"]), data["confidence"])

    def text(self) -> str:
        """``[0.1078, 0.6032]``."""
        return f"[{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class PairedTest:
    """A paired test of a drop: the counts of samples that got worse and better, and the
    one-sided p-value that a drop this large is luck."""

    n: int
    right_to_wrong: int  # 0/1 metrics: right before, wrong now; continuous: worse now
    wrong_to_right: int  # the other way
    p_value: float
    method: str  # "mcnemar-exact" or "paired-t"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def z_two_sided(confidence: float) -> float:
    """The quantile of a two-sided interval at ``confidence`` (1.96 at 0.95)."""
    from scipy.stats import norm

    return float(norm.ppf(1 - (1 - confidence) / 2))


def z_one_sided(level: float) -> float:
    """The quantile a one-sided test at ``level`` (a confidence or a power) needs (1.645 at 0.95)."""
    from scipy.stats import norm

    return float(norm.ppf(level))


# ---------------------------------------------------------------- intervals


def wilson_interval(successes: int, n: int, confidence: float) -> Interval:
    """The Wilson score interval of ``successes`` out of ``n``: unlike value ± z·stderr it
    stays inside [0, 1] and is not of zero width at 0/n or n/n."""
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(float(ci.low), float(ci.high), "wilson", confidence)


def normal_interval(value: float, stderr: float, confidence: float) -> Interval:
    """``value ± z·stderr``: for a metric that is not a proportion, on lm-eval's stderr."""
    half = z_two_sided(confidence) * stderr
    return Interval(value - half, value + half, "normal", confidence)


def bootstrap_interval(values: Sequence[float], confidence: float) -> Interval | None:
    """The percentile bootstrap interval of the mean of ``values`` (fixed seed, so a run's
    report is reproducible); None with fewer than two values."""
    if len(values) < 2:
        return None
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if np.all(data == data[0]):
        # Every resample has the same mean: scipy warns and gives nan; the interval is a point.
        return Interval(float(data[0]), float(data[0]), "bootstrap", confidence)
    result = bootstrap(
        (data,),
        np.mean,
        confidence_level=confidence,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    ci = result.confidence_interval
    return Interval(float(ci.low), float(ci.high), "bootstrap", confidence)


def binary_count(
    value: float, n: int, stderr: float | None, aggregation: str | None = None
) -> int | None:
    """The number of 1s behind ``value`` when it can only be a mean of ``n`` 0/1 scores,
    else None. Without per-sample values that is decided from the aggregation: a ``mean``
    whose count ``value·n`` is whole and whose stderr is the one of 0/1 scores,
    sqrt(p(1-p)/(n-1)) (lm-eval's sample standard deviation over sqrt(n)); for values in
    [0, 1] the sum of squares equals the sum only when every value is 0 or 1."""
    if aggregation not in (None, "mean") or n < 1 or not 0 <= value <= 1:
        return None
    count = value * n
    if abs(count - round(count)) > _TOLERANCE * max(1, n):
        return None
    if n > 1:
        if stderr is None:
            return None
        expected = math.sqrt(value * (1 - value) / (n - 1))
        if abs(stderr - expected) > _TOLERANCE * max(1.0, expected):
            return None
    return round(count)


def is_binary(values: Sequence[float]) -> bool:
    """Whether per-sample scores are all 0 or 1 (lm-eval logs them as floats or bools)."""
    return bool(values) and all(v in (0, 1) for v in values)


# ---------------------------------------------------------------- tests of a drop


def two_sample_p(drop: float, stderr_a: float, stderr_b: float) -> float:
    """One-sided p of a two-sample z-test that a drop this large is luck (the runs taken as
    scoring different questions)."""
    from scipy.stats import norm

    se = math.hypot(stderr_a, stderr_b)
    if se == 0:
        return 0.0 if drop > 0 else 1.0
    return float(norm.sf(drop / se))


def mcnemar_exact(right_to_wrong: int, wrong_to_right: int) -> float:
    """One-sided exact McNemar p of a drop: under no change each discordant sample flips
    either way with probability 1/2, so right→wrong ~ Binomial(discordant, 1/2)."""
    from scipy.stats import binomtest

    discordant = right_to_wrong + wrong_to_right
    if discordant == 0:
        return 1.0
    return float(binomtest(right_to_wrong, discordant, 0.5, alternative="greater").pvalue)


def paired_binary(before: Sequence[float], after: Sequence[float]) -> PairedTest:
    """McNemar's exact test on paired 0/1 scores of the same documents (1 = right)."""
    b = sum(1 for x, y in zip(before, after, strict=True) if x == 1 and y == 0)
    c = sum(1 for x, y in zip(before, after, strict=True) if x == 0 and y == 1)
    return PairedTest(len(before), b, c, mcnemar_exact(b, c), "mcnemar-exact")


def paired_continuous(before: Sequence[float], after: Sequence[float]) -> PairedTest:
    """A one-sided paired t-test on the per-document drops ``before - after`` (higher is
    better: turn a lower-is-better metric's sign before calling)."""
    from scipy.stats import ttest_1samp

    drops = [x - y for x, y in zip(before, after, strict=True)]
    worse = sum(1 for d in drops if d > 0)
    better = sum(1 for d in drops if d < 0)
    n = len(drops)
    mean = sum(drops) / n if n else 0.0
    if n < 2 or all(d == drops[0] for d in drops):
        # No spread: the t statistic is undefined; a constant drop is certain, none is nothing.
        p = 0.0 if mean > 0 and n >= 2 else 1.0
    else:
        p = float(ttest_1samp(drops, 0.0, alternative="greater").pvalue)
    return PairedTest(n, worse, better, p, "paired-t")


# ---------------------------------------------------------------- sample sizes


def samples_unpaired(
    value: float,
    drop: float,
    confidence: float,
    power: float = DEFAULT_POWER,
    variance: float | None = None,
) -> int:
    """Samples per run for the two-sample one-sided z-test at ``confidence`` to find a drop
    of ``drop`` from ``value`` with ``power``: n = (z_a + z_b)² (s1² + s2²) / drop², with
    s² = p(1-p) for a proportion, or ``variance`` (per sample, both runs) when given."""
    if drop <= 0:
        raise ValueError(f"drop must be positive, got {drop}")
    if variance is None:
        after = value - drop
        if not (0 <= value <= 1 and 0 <= after <= 1):
            raise ValueError(f"a proportion and its drop must stay in [0, 1]: {value} - {drop}")
        spread = value * (1 - value) + after * (1 - after)
    else:
        spread = 2 * variance
    z = z_one_sided(confidence) + z_one_sided(power)
    return max(1, math.ceil(z * z * spread / (drop * drop) - 1e-9))


def samples_paired(
    drop: float, discordance: float, confidence: float, power: float = DEFAULT_POWER
) -> int:
    """Documents for McNemar's one-sided test to find a drop of ``drop`` when a fraction
    ``discordance`` of them flip (either way) with ``power`` (Connor 1987):
    n = (z_a·sqrt(psi) + z_b·sqrt(psi - drop²))² / drop²."""
    if drop <= 0:
        raise ValueError(f"drop must be positive, got {drop}")
    if not drop <= discordance <= 1:
        raise ValueError(
            f"the discordance (share of documents that flip) must be between the drop {drop:g} "
            f"and 1, got {discordance:g}"
        )
    za, zb = z_one_sided(confidence), z_one_sided(power)
    root = za * math.sqrt(discordance) + zb * math.sqrt(discordance - drop * drop)
    return max(1, math.ceil(root * root / (drop * drop) - 1e-9))


def samples_threshold(
    value: float, distance: float, confidence: float, power: float = DEFAULT_POWER
) -> int:
    """Samples for a ``ci`` gate to fail a proportion that truly lies ``distance`` beyond its
    threshold ``value`` with ``power``: the whole two-sided interval must clear the threshold,
    n = (z_(1-a/2) + z_b)² p(1-p) / distance², p the proportion beyond it."""
    if distance <= 0:
        raise ValueError(f"distance must be positive, got {distance}")
    p = min(1.0, max(0.0, value))
    z = z_two_sided(confidence) + z_one_sided(power)
    spread = max(p * (1 - p), 1e-12)
    return max(1, math.ceil(z * z * spread / (distance * distance) - 1e-9))
