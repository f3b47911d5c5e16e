"""Reasoning models: score the answer, never the thinking.

A reasoning model writes its thinking first (``<think>...</think>`` in the text, or vLLM's
``message.reasoning`` with ``--reasoning-parser``) and its answer after. Two things go wrong
when it is evaluated like a plain model (lm-eval issues 3382, 3700):

- the server applies the task's stop strings to the whole output: gsm8k's ``Question:`` in the
  thinking ends the answer before it starts;
- the thinking reaches lm-eval's filters, whose regexes pick numbers out of it.

So a reasoning item sends no stop strings (and gives the thinking room: ``max_gen_toks`` plus a
thinking budget), and a filter put in front of every filter pipeline of the task takes the
thinking off and cuts the answer at the task's stop strings, as the server would have cut a
plain model's answer. lm-eval's raw responses (``resps`` in the samples) keep the thinking.

Imports neither pytest nor lm-eval (the filter is duck-typed: lm-eval calls ``apply``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_THINK_END = "</think>"
DEFAULT_THINKING_BUDGET = 2048  # tokens added to max_gen_toks for the thinking
REASONING_VALUES = ("auto", "true", "false")


def parse_reasoning(value: object) -> bool | None:
    """``true``/``false``/``"auto"`` (also as strings) → True, False or None (auto)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    if text == "auto":
        return None
    raise ValueError(f"expected true, false or auto, got {value!r}")


def start_token(end_token: str) -> str | None:
    """``</think>`` → ``<think>``: how a thinking that never ended is recognised."""
    if end_token.startswith("</") and end_token.endswith(">"):
        return "<" + end_token[2:]
    return None


@dataclass(frozen=True)
class Split:
    """One response taken apart."""

    thinking: str
    answer: str
    finished: bool = True  # False: the output ended inside the thinking (no answer)


def split_thinking(text: str, end_token: str = DEFAULT_THINK_END) -> Split:
    """The thinking and the answer of ``text``. Everything up to the last ``end_token`` is
    thinking, and the answer loses its leading whitespace (lm-eval's ``think_end_token`` rule);
    an output that opens a thinking and never closes it is all thinking."""
    if end_token in text:
        thinking, _, answer = text.rpartition(end_token)
        start = start_token(end_token)
        thinking = thinking.lstrip()
        if start and thinking.startswith(start):
            thinking = thinking[len(start) :]
        return Split(thinking, answer.lstrip())
    start = start_token(end_token)
    stripped = text.lstrip()
    if start and stripped.startswith(start):
        return Split(stripped[len(start) :], "", finished=False)
    return Split("", text)


def cut_at_stops(text: str, stops: str | Sequence[str] | None) -> str:
    """``text`` up to the earliest stop string, as a server cuts a generation."""
    if isinstance(stops, str):
        stops = [stops]
    cut = len(text)
    for stop in stops or ():
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


class ThinkingLog:
    """How much each response of an item was thinking, for the summary."""

    def __init__(self) -> None:
        # (task, position of the instance) -> splits of its responses. A task's filter
        # pipelines each see every response: keyed, so a response counts once.
        self._seen: dict[tuple[str, int], list[Split]] = {}

    def record(self, task: str, position: int, splits: list[Split]) -> None:
        self._seen[(task, position)] = splits

    def summary(self) -> dict[str, Any]:
        """``{"responses", "with_thinking", "unfinished", "thinking_chars": {total, mean, max}}``."""
        splits = [s for group in self._seen.values() for s in group]
        chars = [len(s.thinking) for s in splits]
        return {
            "responses": len(splits),
            "with_thinking": sum(1 for s in splits if s.thinking or not s.finished),
            "unfinished": sum(1 for s in splits if not s.finished),
            "thinking_chars": {
                "total": sum(chars),
                "mean": round(sum(chars) / len(chars), 1) if chars else 0.0,
                "max": max(chars, default=0),
            },
        }


class ThinkingFilter:
    """A filter step (lm-eval's ``Filter`` interface) that turns each raw response into its
    answer: thinking off, then cut at the task's stop strings. ``stops`` is asked at apply
    time, after lm-eval has applied ``gen_kwargs`` to the task."""

    def __init__(
        self,
        task: str,
        stops: Callable[[], str | Sequence[str] | None],
        log: ThinkingLog,
        end_token: str = DEFAULT_THINK_END,
    ) -> None:
        self.task = task
        self.stops = stops
        self.log = log
        self.end_token = end_token

    def apply(self, resps: Iterable[Sequence[Any]], docs: Sequence[Any]) -> list[list[Any]]:
        stops = self.stops()
        out = []
        for position, responses in enumerate(resps):
            splits = [split_thinking(r, self.end_token) for r in responses if isinstance(r, str)]
            self.log.record(self.task, position, splits)
            out.append(
                [
                    cut_at_stops(split_thinking(r, self.end_token).answer, stops)
                    if isinstance(r, str)
                    else r
                    for r in responses
                ]
            )
        return out


def reasoning_in_chat_answer(
    data: Mapping[str, Any], end_token: str = DEFAULT_THINK_END
) -> str | None:
    """How a chat completion shows thinking: ``"reasoning field"`` (vLLM's parser),
    ``"<think> in the content"``, or None."""
    try:
        message = data["choices"][0]["message"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, Mapping):
        return None
    if message.get("reasoning") or message.get("reasoning_content"):
        return "reasoning field"
    content = message.get("content")
    if isinstance(content, str):
        start = start_token(end_token)
        if end_token in content or (start and content.lstrip().startswith(start)):
            return f"{start or end_token} in the content"
    return None


def samples_with_thinking(
    rows: list[dict[str, Any]], end_token: str = DEFAULT_THINK_END
) -> list[dict[str, Any]]:
    """lm-eval's sample rows with a ``thinking`` field beside ``resps`` (same shape), so the
    samples JSONL shows what the model thought apart from what was scored."""
    for row in rows:
        resps = row.get("resps")
        if isinstance(resps, list):
            row["thinking"] = [
                [split_thinking(r, end_token).thinking if isinstance(r, str) else "" for r in resp]
                if isinstance(resp, list)
                else ""
                for resp in resps
            ]
    return rows
