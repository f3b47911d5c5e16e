"""Simulated sequential gates: many gates run on documents of known accuracy, counting how
often each decision was wrong and how many documents it took. The statistics test proves the
gate's error rate with it, and ``make perf`` shows the documents saved.

Each simulated gate is the plugin's own: ``judge.sequential``'s sequence, its ``settle`` rule,
its ``round_ends`` rounds; an unsettled threshold at the end is judged as the ``ci`` gate
judges it (failing only when the whole Wilson interval misses it). Documents are Bernoulli
scores (right or wrong) drawn with a seeded generator, so every figure is reproducible.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field

from ..judge.sequential import (
    ConfidenceSequence,
    drop_limit,
    drop_score,
    round_ends,
    settle,
)
from ..judge.statistics import wilson_interval


@dataclass
class Simulated:
    """What ``gates`` simulated gates decided: ``settled_pass``/``settled_fail`` when the
    sequence settled, ``final_pass``/``final_fail`` when the last round left it to the ``ci``
    judgment; ``documents`` evaluated in all."""

    truth: float
    limit: float
    available: int
    gates: int
    decisions: Counter[str] = field(default_factory=Counter)
    documents: int = 0
    largest_documents: int = 0

    @property
    def mean_documents(self) -> float:
        return self.documents / self.gates

    def share(self, *kinds: str) -> float:
        return sum(self.decisions[k] for k in kinds) / self.gates


# The ci gate's interval; only n + 1 distinct ones per simulation, each worked out once.
_wilson = functools.lru_cache(maxsize=None)(wilson_interval)


def _bernoulli(rng: random.Random, p: float, n: int) -> list[float]:
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def _run(
    cs: ConfidenceSequence, scores: list[float], minimum: float | None, maximum: float | None
) -> tuple[str, int]:
    done = 0
    for end in round_ends(len(scores)):
        cs.extend(scores[done:end])
        done = end
        decision = settle(cs, minimum, maximum)
        if decision != "unsettled":
            return f"settled_{decision}", done
    return "unsettled", done


def simulate_threshold(
    truth: float,
    minimum: float,
    available: int,
    gates: int,
    confidence: float,
    seed: int = 0,
) -> Simulated:
    """Gates of a ``min`` threshold on an accuracy whose true value is ``truth``."""
    out = Simulated(truth, minimum, available, gates)
    for g in range(gates):
        scores = _bernoulli(random.Random(f"{seed}-{g}"), truth, available)
        cs = ConfidenceSequence(confidence, extra=[minimum], grid=1)
        decision, used = _run(cs, scores, minimum, None)
        if decision == "unsettled":
            interval = _wilson(int(sum(scores)), available, confidence)
            decision = "final_fail" if interval.high < minimum else "final_pass"
        out.decisions[decision] += 1
        out.documents += used
        out.largest_documents = max(out.largest_documents, used)
    return out


def simulate_drop(
    true_drop: float,
    max_drop: float,
    available: int,
    gates: int,
    confidence: float,
    baseline_accuracy: float = 0.7,
    seed: int = 0,
) -> Simulated:
    """Paired gates of a drop against a baseline of ``baseline_accuracy``: each document's
    baseline and current scores are drawn independently, the current one ``true_drop`` less
    likely right. An unsettled drop is counted as ``unsettled`` (the ``ci`` gate's paired test
    judges it in a real run)."""
    out = Simulated(true_drop, max_drop, available, gates)
    limit = drop_limit(max_drop)
    for g in range(gates):
        rng = random.Random(f"{seed}-{g}")
        base = _bernoulli(rng, baseline_accuracy, available)
        cur = _bernoulli(rng, baseline_accuracy - true_drop, available)
        pairs = [drop_score(b, c) for b, c in zip(base, cur, strict=True)]
        cs = ConfidenceSequence(confidence, extra=[limit], grid=1)
        # A drop at or below max_drop passes: the drop's mean is bounded by a max.
        decision, used = _run(cs, pairs, None, limit)
        out.decisions[decision] += 1
        out.documents += used
        out.largest_documents = max(out.largest_documents, used)
    return out
