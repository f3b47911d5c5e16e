"""The gate's statistics against values computed independently: closed forms (Wilson,
binomial sums, sample-size formulas with the standard library's normal), not scipy."""

from __future__ import annotations

import io
import math
from statistics import NormalDist

import pytest

from pytest_evalchemy.cli import plan as plan_cli
from pytest_evalchemy.judge.per_sample import metric_interval, pair
from pytest_evalchemy.judge.statistics import (
    binary_count,
    bootstrap_interval,
    mcnemar_exact,
    normal_interval,
    paired_continuous,
    samples_paired,
    samples_threshold,
    samples_unpaired,
    two_sample_p,
    wilson_interval,
)
from pytest_evalchemy.testing.answer_key import load_answer_key
from pytest_evalchemy.testing.server import EvalchemyTestServer, parse_flips

from .helpers import REPO

_N = NormalDist()


def _wilson(k: int, n: int, confidence: float) -> tuple[float, float]:
    z = _N.inv_cdf(1 - (1 - confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.mark.parametrize(
    ("k", "expected"),
    [(0, (0.0, 0.2775)), (3, (0.1078, 0.6032)), (10, (0.7225, 1.0))],
)
def test_wilson_bounds_out_of_ten(k: int, expected: tuple[float, float]) -> None:
    iv = wilson_interval(k, 10, 0.95)
    assert (round(iv.low, 4), round(iv.high, 4)) == expected
    assert (iv.low, iv.high) == pytest.approx(_wilson(k, 10, 0.95), abs=1e-12)
    assert (iv.method, iv.confidence) == ("wilson", 0.95)
    # value ± z·stderr gives [0, 0] at 0/10 (certainty); Wilson does not.
    assert iv.high > iv.low


def test_wilson_at_other_confidences() -> None:
    for confidence in (0.5, 0.9, 0.99):
        iv = wilson_interval(36, 48, confidence)
        assert (iv.low, iv.high) == pytest.approx(_wilson(36, 48, confidence), abs=1e-12)


def test_a_proportion_is_told_from_the_aggregation_not_the_name() -> None:
    se = math.sqrt(0.3 * 0.7 / 9)  # lm-eval's stderr of 3 right out of 10
    assert binary_count(0.3, 10, se) == 3
    assert binary_count(0.3, 10, se, "mean") == 3
    assert binary_count(0.3, 10, 0.05) is None  # a mean of scores that are not all 0 or 1
    assert binary_count(0.35, 10, se) is None  # not a whole count
    assert binary_count(0.3, 10, se, "f1") is None  # a corpus-level aggregation
    assert binary_count(0.0, 10, 0.0) == 0
    # A metric called "acc" that is not 0/1 gets the normal interval; one called "score"
    # whose per-sample values are 0/1 gets Wilson.
    assert metric_interval(0.3, 0.05, 10, 0.95).method == "normal"
    iv = metric_interval(0.3, None, 10, 0.95, per_sample=[1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    assert (iv.method, round(iv.low, 4), round(iv.high, 4)) == ("wilson", 0.1078, 0.6032)


def test_normal_and_bootstrap_intervals() -> None:
    iv = normal_interval(2.5, 0.1, 0.95)
    assert (iv.low, iv.high) == pytest.approx((2.304004, 2.695996), abs=1e-6)
    assert iv.method == "normal"
    values = [0.2, 0.5, 0.9, 0.4, 0.7, 0.1, 0.6, 0.8, 0.3, 0.5]
    boot = metric_interval(0.5, None, 10, 0.95, per_sample=values)
    assert boot is not None
    assert boot.method == "bootstrap"
    # Near the normal interval of the mean (0.5 ± 1.96·0.0816), and reproducible (fixed seed).
    assert boot.low == pytest.approx(0.5 - 1.96 * 0.0816, abs=0.03)
    assert boot.high == pytest.approx(0.5 + 1.96 * 0.0816, abs=0.03)
    assert bootstrap_interval(values, 0.95) == boot
    assert bootstrap_interval([0.4, 0.4, 0.4], 0.95).low == 0.4


def _binomial_tail(b: int, n: int) -> float:
    """P(X >= b) for X ~ Binomial(n, 1/2), summed by hand."""
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


@pytest.mark.parametrize(("b", "c"), [(6, 0), (3, 1), (10, 4), (0, 5), (7, 7)])
def test_mcnemar_exact_one_sided(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(_binomial_tail(b, b + c), abs=1e-12)


def test_mcnemar_exact_values() -> None:
    assert mcnemar_exact(6, 0) == 1 / 64
    assert mcnemar_exact(3, 1) == 5 / 16
    assert mcnemar_exact(0, 0) == 1.0  # nothing flipped: no evidence of a drop


def test_paired_t_on_the_differences() -> None:
    before = [0.9, 0.8, 0.7, 0.95, 0.6]
    after = [0.7, 0.75, 0.6, 0.9, 0.65]
    drops = [b - a for b, a in zip(before, after, strict=True)]
    mean = sum(drops) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in drops) / 4)
    t = mean / (sd / math.sqrt(5))
    test = paired_continuous(before, after)
    # Student's t with 4 degrees of freedom in closed form: F(t) = 1/2 + 3/4·x·(1 - x²/3),
    # x = t / sqrt(4 + t²).
    x = t / math.sqrt(4 + t * t)
    assert test.p_value == pytest.approx(1 - (0.5 + 0.75 * x * (1 - x * x / 3)), abs=1e-9)
    assert (test.n, test.right_to_wrong, test.wrong_to_right, test.method) == (5, 4, 1, "paired-t")
    assert paired_continuous([0.5, 0.5], [0.5, 0.5]).p_value == 1.0


def test_two_sample_p_is_the_normal_tail() -> None:
    assert two_sample_p(0.25, 0.1637, 0.1890) == pytest.approx(
        1 - _N.cdf(0.25 / math.hypot(0.1637, 0.1890)), abs=1e-12
    )


def _z(level: float) -> float:
    return _N.inv_cdf(level)


def test_sample_sizes_against_the_closed_forms() -> None:
    za, zb = _z(0.95), _z(0.8)
    unpaired = (za + zb) ** 2 * (0.7 * 0.3 + 0.68 * 0.32) / 0.02**2
    assert samples_unpaired(0.7, 0.02, 0.95) == math.ceil(unpaired) == 6610
    paired = (za * math.sqrt(0.1) + zb * math.sqrt(0.1 - 0.02**2)) ** 2 / 0.02**2
    assert samples_paired(0.02, 0.1, 0.95) == math.ceil(paired) == 1544
    # All flips one way (discordance = drop) is the least a paired test can need.
    least = (za * math.sqrt(0.02) + zb * math.sqrt(0.02 - 0.02**2)) ** 2 / 0.02**2
    assert samples_paired(0.02, 0.02, 0.95) == math.ceil(least) == 308
    # A threshold under ci: the two-sided interval must clear it.
    threshold = (_z(0.975) + zb) ** 2 * 0.88 * 0.12 / 0.02**2
    assert samples_threshold(0.88, 0.02, 0.95) == math.ceil(threshold) == 2073
    # Continuous: per-sample variance instead of p(1-p).
    assert samples_unpaired(2.0, 0.1, 0.95, variance=0.25) == math.ceil((za + zb) ** 2 * 0.5 / 0.01)
    with pytest.raises(ValueError, match=r"between the drop 0\.02 and 1"):
        samples_paired(0.02, 0.01, 0.95)


def test_plan_command_prints_unpaired_and_paired() -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["--metric", "acc", "--value", "0.7", "--drop", "0.02", "--paired-discordance", "0.1"]
    assert plan_cli.main(argv, stdout=out, stderr=err) == 0
    assert out.getvalue().splitlines() == [
        "acc at 0.7: samples to detect a drop of 0.02 at 0.95 confidence (one-sided) with 80% power",
        "  unpaired (two-sample z-test, per run): 6610",
        "  paired (McNemar exact, discordance 0.1): 1544",
    ]
    out = io.StringIO()
    assert plan_cli.main(["--value", "0.7", "--drop", "0.02"], stdout=out) == 0
    assert "  paired (McNemar exact, discordance 0.2): 3090" in out.getvalue().splitlines()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--value", "0.01", "--drop", "0.02"],
            "evalchemy plan: error: --value 0.01 --drop 0.02: a proportion and the value it "
            "drops to must be between 0 and 1 (for another metric give --sd)",
        ),
        (
            ["--value", "0.7", "--paired-discordance", "0.01"],
            "evalchemy plan: error: --paired-discordance: expected a share between the drop "
            "0.02 and 1 (a drop of 0.02 flips at least that share of documents), got 0.01",
        ),
        (
            ["--value", "0.7", "--confidence", "95"],
            "evalchemy plan: error: --confidence: expected a number between 0 and 1, got 95",
        ),
    ],
)
def test_plan_command_bad_input(argv: list[str], message: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert plan_cli.main(argv, stdout=out, stderr=err) == 4
    assert err.getvalue().strip() == message
    assert out.getvalue() == ""


def test_plan_through_the_front_door(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_evalchemy.cli import frontend as cli

    assert (
        cli.main(["plan", "--value", "0.7", "--drop", "0.02", "--paired-discordance", "0.1"]) == 0
    )
    assert "paired (McNemar exact, discordance 0.1): 1544" in capsys.readouterr().out


def _row(doc: int, acc: float, prompt: str = "p") -> dict[str, object]:
    return {"doc_id": doc, "filter": "none", "acc": acc, "prompt_hash": prompt, "metrics": ["acc"]}


def test_pairing_by_doc_id_and_prompt_hash() -> None:
    base = [_row(i, 1.0 if i % 4 != 3 else 0.0) for i in range(8)]
    now = [_row(i, 0.0 if i in (0, 1) else r["acc"]) for i, r in enumerate(base)]  # type: ignore[misc]
    pairing, why = pair(now, base, "acc,none")
    assert why == ""
    assert pairing is not None
    assert pairing.test.to_dict() == {
        "n": 8,
        "right_to_wrong": 2,
        "wrong_to_right": 0,
        "p_value": 0.25,
        "method": "mcnemar-exact",
    }
    other_prompts = [_row(i, 1.0, prompt="q" if i == 5 else "p") for i in range(8)]
    assert pair(other_prompts, base, "acc,none") == (
        None,
        "the prompts differ on 1 of 8 documents (first: doc 5): a changed template, "
        "description or few-shot set",
    )
    assert pair(now[:6], base, "acc,none")[1] == (
        "the runs scored different documents (0 only in this run, 2 only in the baseline)"
    )
    assert pair([], base, "acc,none")[1] == "this run logged no samples of acc,none"


def test_server_flips_the_chosen_documents() -> None:
    key = load_answer_key(REPO / "benchmarks")
    server = EvalchemyTestServer(key, flip=["mini_arc:0,mini_arc:3", "mini_mmlu:1"])
    by = {(e.task, e.index): e.known for e in server.entries}
    assert (by[("mini_arc", 0)], by[("mini_arc", 3)], by[("mini_mmlu", 1)]) == (False, True, False)
    assert by[("mini_arc", 1)] is True
    assert by[("mini_mmlu", 3)] is False
    with pytest.raises(ValueError, match="--flip 'mini_arc': expected TASK:DOC_ID"):
        parse_flips(["mini_arc"])
