"""The sequential gate's error rate, proven by simulation: thousands of gates of the plugin's
own sequence, rounds and settling rule, at true values at, just above and just below the
threshold. A wrong decision is a pass when the truth misses the threshold, or a fail when it
meets it; each kind must stay at or below 1 - confidence. The rates are printed (``-s``)."""

from __future__ import annotations

import math
import random

import pytest

from pytest_evalchemy.judge.sequential import (
    ConfidenceSequence,
    document_order,
    drop_bounds,
    drop_limit,
    drop_score,
    round_ends,
    settle,
)
from pytest_evalchemy.testing.gate_simulation import simulate_drop, simulate_threshold

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
GATES = 5000  # per true value
DOCUMENTS = 100
THRESHOLD = 0.6
NEAR = 0.03  # "just above" and "just below"


@pytest.mark.parametrize(
    ("truth", "wrong"),
    [
        # At the threshold the truth meets it: failing is the wrong decision.
        (THRESHOLD, ("settled_fail", "final_fail")),
        (THRESHOLD + NEAR, ("settled_fail", "final_fail")),
        # Below it, passing on the sequence's word is wrong; a ``final_pass`` is the ci
        # gate's benefit of the doubt, which claims nothing.
        (THRESHOLD - NEAR, ("settled_pass",)),
    ],
    ids=["at", "just-above", "just-below"],
)
def test_wrong_threshold_decisions_stay_within_the_error_rate(
    truth: float, wrong: tuple[str, ...]
) -> None:
    sim = simulate_threshold(truth, THRESHOLD, DOCUMENTS, GATES, CONFIDENCE, seed=7)
    rate = sim.share(*wrong)
    print(
        f"\nmin {THRESHOLD} at truth {truth:.2f}: {GATES} gates of {DOCUMENTS} documents, "
        f"wrong {rate:.4f} (allowed {ALPHA:.2f}); {dict(sorted(sim.decisions.items()))}; "
        f"{sim.mean_documents:.1f} documents on average"
    )
    assert sum(sim.decisions.values()) == GATES
    assert rate <= ALPHA


@pytest.mark.parametrize(
    ("true_drop", "wrong"),
    [
        (0.05, ("settled_fail",)),  # a drop of exactly max_drop is not beyond it
        (0.05 - NEAR, ("settled_fail",)),
        (0.05 + NEAR, ("settled_pass",)),
    ],
    ids=["at", "just-below", "just-above"],
)
def test_wrong_drop_decisions_stay_within_the_error_rate(
    true_drop: float, wrong: tuple[str, ...]
) -> None:
    sim = simulate_drop(true_drop, 0.05, DOCUMENTS * 2, GATES, CONFIDENCE, seed=11)
    rate = sim.share(*wrong)
    print(
        f"\nmax_drop 0.05 at true drop {true_drop:.2f}: {GATES} paired gates of "
        f"{DOCUMENTS * 2} documents, wrong {rate:.4f} (allowed {ALPHA:.2f}); "
        f"{dict(sorted(sim.decisions.items()))}"
    )
    assert rate <= ALPHA


def test_a_plain_answer_settles_early_and_right() -> None:
    # The gate would be useless if it never stopped: far from the threshold it must.
    above = simulate_threshold(0.9, THRESHOLD, 1000, 500, CONFIDENCE, seed=3)
    below = simulate_threshold(0.3, THRESHOLD, 1000, 500, CONFIDENCE, seed=3)
    print(f"\nfar above: {above.mean_documents:.0f} of 1000; far below: {below.mean_documents:.0f}")
    assert above.decisions["settled_pass"] == 500
    assert below.decisions["settled_fail"] == 500
    assert above.mean_documents < 200
    assert below.mean_documents < 200


def _clipped_normal_mean(mu: float, sd: float) -> float:
    """E[min(max(X, 0), 1)] for X ~ N(mu, sd): the true mean of the scores drawn below."""

    def cdf(z: float) -> float:
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def pdf(z: float) -> float:
        return math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

    a, b = (0 - mu) / sd, (1 - mu) / sd
    return mu * (cdf(b) - cdf(a)) - sd * (pdf(b) - pdf(a)) + (1 - cdf(b))


def test_the_bounds_hold_the_truth_at_every_round_together() -> None:
    # Anytime validity for scores that are not right-or-wrong: the true mean inside the
    # bounds after every round of a sequence at once, in all but 1 - confidence of the
    # sequences (not merely at each round on its own).
    mu, sd, runs, n = 0.7, 0.3, 300, 200
    truth = _clipped_normal_mean(mu, sd)
    missed = 0
    for run in range(runs):
        rng = random.Random(f"cover-{run}")
        scores = [min(1.0, max(0.0, rng.gauss(mu, sd))) for _ in range(n)]
        cs = ConfidenceSequence(CONFIDENCE, grid=200)  # bounds to 0.005: enough here
        done = 0
        ok = True
        for end in round_ends(n):
            cs.extend(scores[done:end])
            done = end
            b = cs.bounds()
            ok = ok and b.low <= truth <= b.high
        missed += not ok
    print(
        f"\nsequences whose bounds missed the true mean {truth:.4f} at some round: {missed} of {runs}"
    )
    assert missed / runs <= ALPHA


def test_settle_reads_the_side_the_sequence_left_the_threshold_on() -> None:
    cs = ConfidenceSequence(CONFIDENCE, extra=[0.5, 0.95])
    cs.extend([1.0] * 60)
    assert cs.excluded(0.5) == "above"
    assert settle(cs, 0.5, None) == "pass"
    assert settle(cs, None, 0.5) == "fail"
    assert settle(cs, 0.95, None) == "unsettled"  # 60 right answers cannot show 0.95
    b = cs.bounds()
    assert (b.n, b.mean, b.high) == (60, 1.0, 1.0)
    assert b.low > 0.5
    with pytest.raises(ValueError, match="not in"):
        cs.add(1.5)
    with pytest.raises(KeyError):
        cs.excluded(0.1234567)


def test_drop_scale_and_rounds() -> None:
    assert (drop_score(1.0, 0.0), drop_score(0.0, 1.0)) == (1.0, 0.0)
    assert drop_score(1.0, 1.0) == 0.5 == drop_limit(0.0)
    cs = ConfidenceSequence(CONFIDENCE)
    cs.extend([0.5] * 50)
    b = drop_bounds(cs.bounds())
    assert b.low < 0.0 < b.high
    assert b.mean == 0.0
    assert round_ends(100) == [20, 30, 45, 68, 100]
    assert (round_ends(10), round_ends(0)) == ([10], [])
    order = document_order(100, seed=5)
    assert sorted(order) == list(range(100))
    assert order != list(range(100))
    assert order == document_order(100, seed=5) != document_order(100, seed=6)
