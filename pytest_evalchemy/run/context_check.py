"""Prompts longer than the context: how many requests of an item lm-eval will cut, and by how
much. lm-eval cuts a loglikelihood request longer than ``max_length`` from the left with only
a line in its log, and sends a generation request whose prompt plus ``max_gen_toks`` does not
fit (vLLM rejects those with HTTP 400); the project's completions model counts them here, per
item, from the token ids it sees. Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


class ContextWarning(UserWarning):
    """An item's prompts are cut to fit the context (shown in pytest's warnings summary)."""


class ContextTooLong(Exception):
    """--evalchemy-strict-context: prompts would be cut or could not fit."""


@dataclass
class ContextCheck:
    """One item's counts; ``strict`` turns the first over-long batch into ``ContextTooLong``,
    raised before that batch is sent."""

    strict: bool = False
    max_length: int | None = None  # the item's max_length, as the user set it
    cut: int = 0  # loglikelihood requests cut from the left
    cut_most: int = 0  # tokens cut from the worst one
    cut_total: int = 0
    no_room: int = 0  # generation requests whose prompt + max_gen_toks exceeds max_length
    no_room_most: int = 0  # tokens over, worst one
    max_gen_toks: int | None = None
    checked: int = 0  # requests of either kind measured: what the cut share is of
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def loglikelihood(self, lengths: list[int], limit: int) -> None:
        """``lengths``: context + continuation tokens of each request; ``limit``: the most
        lm-eval keeps (its ``max_length``, one less than the user's)."""
        over = [n - limit for n in lengths if n > limit]
        with self._lock:
            self.checked += len(lengths)
            if not over:
                return
            self.cut += len(over)
            self.cut_most = max(self.cut_most, *over)
            self.cut_total += sum(over)
        if self.strict:
            raise ContextTooLong(self.message())

    def generation(self, lengths: list[int], max_gen_toks: int, limit: int) -> None:
        """``lengths``: prompt tokens of each request; it fits when prompt + ``max_gen_toks``
        is at most ``limit``."""
        over = [n + max_gen_toks - limit for n in lengths if n + max_gen_toks > limit]
        with self._lock:
            self.checked += len(lengths)
            if not over:
                return
            self.no_room += len(over)
            self.no_room_most = max(self.no_room_most, *over)
            self.max_gen_toks = max_gen_toks
        if self.strict:
            raise ContextTooLong(self.message())

    @property
    def found(self) -> bool:
        return bool(self.cut or self.no_room)

    @property
    def broken(self) -> int:
        """Requests cut to fit, or that cannot fit: the count of the record's cut share."""
        return self.cut + self.no_room

    def message(self) -> str:
        """One line: what was cut, by how much, and what to do."""
        parts = []
        if self.cut:
            parts.append(
                f"{self.cut} loglikelihood request(s) longer than max_length {self.max_length} "
                f"are cut from the left (by up to {self.cut_most} tokens, {self.cut_total} in all), "
                "so they are scored on cut prompts"
            )
        if self.no_room:
            parts.append(
                f"{self.no_room} generation request(s) do not fit max_length {self.max_length} "
                f"with max_gen_toks {self.max_gen_toks} (by up to {self.no_room_most} tokens): "
                "vLLM rejects them (HTTP 400)"
            )
        return (
            "; ".join(parts) + ". Serve a longer context (vLLM --max-model-len) or lower "
            "num_fewshot or max_gen_toks"
        )

    def to_dict(self) -> dict[str, Any]:
        """The record's ``context`` field."""
        return {
            "max_length": self.max_length,
            "truncated_requests": self.cut,
            "truncated_tokens_max": self.cut_most,
            "truncated_tokens_total": self.cut_total,
            "generation_over": self.no_room,
            "generation_over_tokens_max": self.no_room_most,
            "max_gen_toks": self.max_gen_toks,
            "message": self.message() if self.found else "",
        }
