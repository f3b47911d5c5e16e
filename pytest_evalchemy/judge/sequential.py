"""The sequential gate's statistics: an anytime-valid confidence sequence for the mean of
per-document scores in [0, 1], and the rule that settles a threshold on it.

A fixed-sample interval is valid once, at the sample size chosen in advance; looked at after
every round and acted on, its error grows with each look. A confidence sequence is valid at
every sample size at once: with probability at least ``confidence`` it holds the true mean
after every document, however many times it is looked at and whenever the looking stops. So
a gate may stop as soon as the sequence lies on one side of its threshold, and the chance of a
wrong decision stays at most ``1 - confidence``.

The sequence is the betting confidence sequence of Waudby-Smith and Ramdas (2023, "Estimating
means of bounded random variables by betting", JRSS B), with their hedged capital and
predictable plug-in bets: for each candidate mean ``m`` two bettors stake a fraction of their
capital on each document's score being above, or below, ``m``. Under the true mean neither
capital is expected to grow (each is a nonnegative supermartingale), so by Ville's inequality
the chance that either ever reaches ``1/alpha`` is at most ``alpha``; an ``m`` whose capital
did is out of the sequence for good. Bets shrink as the running variance estimate does, which
makes the sequence tight for accuracies near 0 or 1, where the normal interval is not.

Candidate means are a grid of ``1/grid`` steps (the bounds shown are rounded outwards to it);
a threshold is tracked as a candidate of its own, so a decision never depends on the grid.

Imports nothing of the plugin and no pytest.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

METHOD = "betting"
METHOD_TEXT = (
    "betting confidence sequence (Waudby-Smith & Ramdas 2023), hedged, predictable plug-in"
)
Side = Literal["above", "below"]
Decision = Literal["pass", "fail", "unsettled"]

# The largest stake, as a share of what the bettor could lose: WSR's truncation c (1/2 keeps
# each capital's log steps bounded, so one document never decides by itself).
_MAX_STAKE = 0.5
# The share of the starting capital each bettor gets (WSR's theta; 1/2: no side favoured).
_THETA = 0.5


@dataclass(frozen=True)
class Bounds:
    """Where the true mean lies, at the sequence's confidence, after ``n`` documents."""

    low: float
    high: float
    n: int
    mean: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "mean": round(self.mean, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
        }


class ConfidenceSequence:
    """The running confidence sequence of one metric. ``extra`` are candidate means tracked
    exactly (the thresholds); ``excluded(m)`` says on which side of such an ``m`` the mean was
    shown to lie."""

    def __init__(self, confidence: float, extra: Iterable[float] = (), grid: int = 1000) -> None:
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence {confidence} is not between 0 and 1")
        self.confidence = confidence
        self._log_level = math.log(1.0 / (1.0 - confidence))
        self._log_bet_factor = 2.0 * math.log(2.0 / (1.0 - confidence))
        self._grid = grid
        points = {i / grid for i in range(grid + 1)}
        points.update(float(m) for m in extra)
        # Each candidate's log capital, betting up and betting down; removed once excluded.
        self._up: dict[float, float] = {m: 0.0 for m in points}
        self._down: dict[float, float] = dict.fromkeys(points, 0.0)
        self._out: dict[float, Side] = {}
        self.n = 0
        self._sum = 0.0
        # WSR's regularised running mean and variance, for the next bet (predictable).
        self._mean_hat = 0.5
        self._var_sum = 0.25

    @property
    def mean(self) -> float:
        return self._sum / self.n if self.n else math.nan

    def _bet(self) -> float:
        t = self.n + 1
        variance = self._var_sum / t
        return math.sqrt(self._log_bet_factor / (variance * t * math.log(1.0 + t)))

    def add(self, x: float) -> None:
        """One document's score (in [0, 1])."""
        if not 0.0 <= x <= 1.0 or math.isnan(x):
            raise ValueError(f"score {x!r} is not in [0, 1]")
        bet = self._bet()
        log_theta, log_rest = math.log(_THETA), math.log(1.0 - _THETA)
        level = self._log_level
        up, down, out = self._up, self._down, self._out
        for m in list(up):
            # A bettor can stake at most what keeps its capital positive: 1/m up, 1/(1-m) down.
            stake_up = min(bet, _MAX_STAKE / m) if m > 0 else bet
            stake_down = min(bet, _MAX_STAKE / (1.0 - m)) if m < 1 else bet
            gain_up = 1.0 + stake_up * (x - m)
            gain_down = 1.0 - stake_down * (x - m)
            u = up[m] + (math.log(gain_up) if gain_up > 0 else -math.inf)
            d = down[m] + (math.log(gain_down) if gain_down > 0 else -math.inf)
            if log_theta + u >= level:
                out[m] = "above"
            elif log_rest + d >= level:
                out[m] = "below"
            else:
                up[m], down[m] = u, d
                continue
            del up[m], down[m]
        self.n += 1
        self._sum += x
        self._var_sum += (x - self._mean_hat) ** 2
        self._mean_hat = (0.5 + self._sum) / (self.n + 1)

    def extend(self, xs: Iterable[float]) -> None:
        for x in xs:
            self.add(x)

    def excluded(self, m: float) -> Side | None:
        """``above`` once the mean was shown to lie above ``m``, ``below`` below it; None while
        ``m`` is still in the sequence. ``m`` must be a grid point or one of ``extra``."""
        if m in self._out:
            return self._out[m]
        if m in self._up:
            return None
        raise KeyError(f"{m} is not a candidate mean of this sequence")

    def bounds(self) -> Bounds:
        """The sequence now, rounded outwards to the grid."""
        step = 1.0 / self._grid
        inside = [m for m in self._up if abs(m * self._grid - round(m * self._grid)) < 1e-9]
        if not inside:  # every grid point excluded: the mean lies between two of them
            mean = self.mean
            low = math.floor(mean * self._grid) / self._grid
            return Bounds(low, min(1.0, low + step), self.n, mean)
        return Bounds(max(0.0, min(inside) - step), min(1.0, max(inside) + step), self.n, self.mean)


def settle(cs: ConfidenceSequence, minimum: float | None, maximum: float | None) -> Decision:
    """A threshold's decision on the sequence: ``pass`` once the mean is shown to lie at or
    above ``minimum`` and at or below ``maximum``, ``fail`` once it is shown to lie outside
    either, ``unsettled`` until then."""
    verdicts: list[Decision] = []
    if minimum is not None:
        side = cs.excluded(minimum)
        verdicts.append("pass" if side == "above" else "fail" if side == "below" else "unsettled")
    if maximum is not None:
        side = cs.excluded(maximum)
        verdicts.append("pass" if side == "below" else "fail" if side == "above" else "unsettled")
    if "fail" in verdicts:
        return "fail"
    if verdicts and all(v == "pass" for v in verdicts):
        return "pass"
    return "unsettled"


def drop_score(baseline: float, current: float) -> float:
    """One paired document's drop (baseline minus current score, in [-1, 1]) mapped into
    [0, 1], where the sequence works."""
    return (baseline - current + 1.0) / 2.0


def drop_limit(max_drop: float) -> float:
    """``max_drop`` on the scale of ``drop_score``."""
    return (max_drop + 1.0) / 2.0


def drop_bounds(b: Bounds) -> Bounds:
    """Bounds on the ``drop_score`` scale back on the drop's own."""
    return Bounds(2.0 * b.low - 1.0, 2.0 * b.high - 1.0, b.n, 2.0 * b.mean - 1.0)


def round_ends(available: int, first: int = 20, growth: float = 1.5) -> list[int]:
    """How many documents have been evaluated after each round: ``first``, then each round
    ``growth`` times the last, the last round ending at ``available``. Growing rounds keep the
    number of lm-eval calls near the logarithm of the documents used."""
    if available <= 0:
        return []
    ends: list[int] = []
    n = min(first, available)
    while True:
        ends.append(n)
        if n >= available:
            return ends
        n = min(available, max(n + 1, math.ceil(n * growth)))


def document_order(available: int, seed: int) -> list[int]:
    """The documents' indices in the seeded random order the rounds take them in, so that a
    prefix is a random sample and the same seed gives the same rounds (resume, a baseline)."""
    order = list(range(available))
    random.Random(seed).shuffle(order)
    return order


@dataclass
class GateRun:
    """One simulated or real sequential gate on a single metric: rounds of ``round_ends`` over
    ``scores`` (taken in order), stopping once ``settle`` decides."""

    confidence: float
    minimum: float | None = None
    maximum: float | None = None

    def run(self, scores: Sequence[float], ends: Sequence[int]) -> tuple[Decision, int]:
        extra = [t for t in (self.minimum, self.maximum) if t is not None]
        cs = ConfidenceSequence(self.confidence, extra=extra, grid=1)
        done = 0
        for end in ends:
            cs.extend(scores[done:end])
            done = end
            decision = settle(cs, self.minimum, self.maximum)
            if decision != "unsettled":
                return decision, done
        return "unsettled", done
