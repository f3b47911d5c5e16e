"""Whether an item's answers are worth scoring: how many of its generation answers ended at
``max_tokens`` (the server's ``finish_reason: "length"``), how many of its reasoning answers
never closed their thinking, how many of its prompts were cut to fit the context. A score
computed from answers cut off mid-sentence measures the limits, not the model: the gate fails
an item whose share of any of these is above its ``max_invalid_share``.

The plugin's models count the finish reasons (``AnswerEnds``, on the item's ``ModelPolicy``)
as the server's answers come in; lm-eval keeps only the text. An answer lm-eval replays from
its request cache (a resumed item) reaches no model and has no finish reason: it is counted
in neither ``count`` nor ``of`` but as ``replayed``, so the length share of a resumed item is
that of the answers the server gave in this run (the cut prompts likewise: a cached request
is not measured again). The thinking is read from the text, so unclosed thinking counts every
answer, cached or not.

Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.record import ValidityShare
from .context_check import ContextCheck

LENGTH = "length"  # the finish_reason of an answer that ran out of max_tokens


@dataclass
class AnswerEnds:
    """One item's generation answers as the server ended them."""

    answers: int = 0
    length: int = 0  # ended at max_tokens
    max_tokens: int | None = None  # the largest max_tokens a generation request was sent with
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def asked(self, max_tokens: Any) -> None:
        """A generation request goes out with ``max_tokens``."""
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
            with self._lock:
                self.max_tokens = max(self.max_tokens or 0, max_tokens)

    def answered(self, outputs: Any) -> None:
        """The server's answer to generation requests (one JSON body, or lm-eval's list of
        them): each choice is one answer."""
        reasons = list(_finish_reasons(outputs))
        with self._lock:
            self.answers += len(reasons)
            self.length += sum(1 for r in reasons if r == LENGTH)

    def to_dict(self) -> dict[str, Any]:
        """What travels out of the harness in ``ItemResult.ends``."""
        return {"answers": self.answers, "length": self.length, "max_tokens": self.max_tokens}


def _finish_reasons(outputs: Any) -> Iterable[Any]:
    for out in outputs if isinstance(outputs, list) else [outputs]:
        choices = out.get("choices") if isinstance(out, dict) else None
        for choice in choices if isinstance(choices, list) else ():
            yield choice.get("finish_reason") if isinstance(choice, dict) else None


def share(count: int, of: int) -> ValidityShare:
    """``count`` of ``of`` broken, as the record keeps it."""
    return {"count": count, "of": of, "share": round(count / of, 4) if of else 0.0}


def generation_answers(results: dict[str, Any]) -> int:
    """How many generation answers lm-eval scored, from its results: each document of a
    ``generate_until`` task, ``repeats`` times."""
    configs = results.get("configs") or {}
    total = 0
    for task, counts in (results.get("n-samples") or {}).items():
        config = configs.get(task) or {}
        if config.get("output_type") == "generate_until":
            total += int(counts.get("effective", 0)) * int(config.get("repeats") or 1)
    return total


def validity_of(
    ends: dict[str, Any] | None,
    thinking: dict[str, Any] | None,
    context: ContextCheck,
    results: dict[str, Any],
) -> dict[str, ValidityShare]:
    """The record's ``validity``: the kinds that apply to the item (it scored generation
    answers, it is a reasoning item, its prompts were measured), each with its share; lm-eval's
    ``results`` say how many generation answers there were, the cached ones included."""
    out: dict[str, ValidityShare] = {}
    ends = ends or {}
    answers = int(ends.get("answers") or 0)
    replayed = generation_answers(results) - answers
    if answers or replayed > 0:
        entry = share(int(ends.get("length") or 0), answers)
        if ends.get("max_tokens"):
            entry["max_tokens"] = ends["max_tokens"]
        if replayed > 0:
            entry["replayed"] = replayed
        out["length"] = entry
    if thinking and thinking.get("responses"):
        out["unclosed_thinking"] = share(thinking["unfinished"], thinking["responses"])
    if context.checked:
        out["cut_prompts"] = share(context.broken, context.checked)
    return out
