"""lm-eval's logged samples: an item's samples files, their rows, and a row reduced to what a
reader compares (prompt, answer, target, right or wrong). Read by the gate's pairing and by
the reports. Imports nothing else of the package but ``core``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .record import as_float
from .results import name_of_file_part, safe_file_part

Rows = list[dict[str, Any]]
SAMPLES_GLOB = "samples_*.jsonl"


def samples_file_name(task: str) -> str:
    """The name of the file of an lm-eval task's samples: one file of the item's folder
    whatever the task's name (a YAML's ``task`` may hold '/' or '..')."""
    return f"samples_{safe_file_part(task)}.jsonl"


def samples_task(path: Path) -> str:
    """The lm-eval task whose samples the file ``path`` holds."""
    return name_of_file_part(path.name.removeprefix("samples_").removesuffix(".jsonl"))


def read_samples(path: Path) -> Rows:
    """The rows of a samples JSONL; a line cut by a killed run is skipped."""
    rows = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
    return rows


def item_samples(run_dir: Path, record: dict[str, Any]) -> dict[str, Rows]:
    """``{lm_eval_task: rows}`` of an item's samples files in run folder ``run_dir``."""
    item_dir = record.get("item_dir")
    if not item_dir or not (run_dir / item_dir).is_dir():
        return {}
    return {
        samples_task(path): read_samples(path)
        for path in sorted((run_dir / item_dir).glob(SAMPLES_GLOB))
    }


@dataclass(frozen=True)
class Sample:
    """One logged sample, reduced to what a reader compares: prompt, answer, target."""

    task: str  # the browser's task filter value: the item key, plus the lm-eval task if other
    doc_id: Any
    filter: str
    prompt: str
    choices: tuple[str, ...]
    chosen: int | None  # the choice the metric picked (acc: the highest loglikelihood)
    target_index: int | None
    generation: str | None  # the raw generated text (generation tasks)
    answer: str  # what the metric compared: the chosen choice, or the filtered generation
    target: str
    correct: bool | None  # None: the metric is not right/wrong (a perplexity, a BLEU)
    score: str  # "acc=1", "exact_match=0"


def _arguments(row: dict[str, Any]) -> list[list[Any]]:
    args = row.get("arguments") or []
    if isinstance(args, dict):
        # Some lm-eval versions log {"gen_args_0": {"arg_0": context, "arg_1": ...}, ...}.
        args = [list(a.values()) if isinstance(a, dict) else a for a in args.values()]
    return [a if isinstance(a, list) else [a] for a in args]


def _prompt_text(value: Any) -> str:
    """The prompt as a reader wants it: a chat endpoint's messages (logged as their JSON)
    one turn after another, a rendered chat template or a plain prompt as it is."""
    while isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    text = "" if value is None else str(value)
    if text.startswith("[{"):
        try:
            messages = json.loads(text)
        except ValueError:
            return text
        if isinstance(messages, list) and all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages
        ):
            return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)
    return text


def _first_text(value: Any) -> str:
    while isinstance(value, (list, tuple)) and value:
        value = value[0]
    return "" if value is None or isinstance(value, (list, tuple)) else str(value)


def _target(target: Any, choices: tuple[str, ...]) -> tuple[str, int | None]:
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
        return choices[target].strip(), target
    if isinstance(target, list):
        return ", ".join(_target(t, choices)[0] for t in target), None
    text = "" if target is None else str(target)
    stripped = [c.strip() for c in choices]
    index = stripped.index(text.strip()) if text.strip() in stripped else None
    return text, index


def _gold(target: Any, choices: tuple[str, ...]) -> set[int] | None:
    """The indices of the right choices (several for a multiple-target task), None if unknown."""
    found = [_target(t, choices)[1] for t in (target if isinstance(target, list) else [target])]
    return {i for i in found if i is not None} if None not in found else None


def _metric_value(row: dict[str, Any], metric: str | None) -> tuple[str, float] | None:
    """``(name, value)`` of ``metric`` in the row, or of its first numeric metric."""
    names = [metric] if metric else row.get("metrics") or []
    for name in names if isinstance(names, list) else []:
        value = as_float(row.get(name))
        if value is not None:
            return str(name), value
    return None


# How lm-eval's multiple-choice metrics pick their answer from the choices' loglikelihoods
# (lm_eval/api/task.py, ConfigurableTask.process_results): acc takes the highest sum, acc_norm
# that sum over the choice's length in characters, acc_bytes over its length in UTF-8 bytes,
# acc_mutual_info the sum less the choice's loglikelihood without context. Every other metric
# (exact_match, brier_score, ...) is shown with acc's pick.
_LENGTHS = {
    "acc_norm": lambda choice: float(len(choice)),
    "acc_bytes": lambda choice: float(len(choice.encode("utf-8"))),
}
MUTUAL_INFO = "acc_mutual_info"


def _argmax(values: list[float]) -> int:
    # np.argmax's rule: the first of equal values.
    return values.index(max(values))


def _normalised(lls: list[float], lengths: list[float]) -> list[float]:
    # An empty choice never wins here (lm-eval's numpy gives it -inf, or nan at a loglikelihood
    # of 0, which its argmax would take: a degenerate task either way).
    return [ll / n if n else -math.inf for ll, n in zip(lls, lengths, strict=True)]


def _delimiters(continuations: tuple[str, ...]) -> list[str]:
    """The target delimiters lm-eval may have put before every choice, most likely first.

    A request's continuation is the task's ``target_delimiter`` (default " ") and the choice,
    and the length lm-eval divides by is the choice's alone. The delimiter is logged nowhere
    (and a chat template drops it), so it is read off the continuations: the whitespace they
    all start with, or a shorter part of it, or none."""
    first = continuations[0] if continuations else ""
    lead = 0
    while (
        lead < len(first)
        and first[lead].isspace()
        and all(c[lead : lead + 1] == first[lead] for c in continuations)
    ):
        lead += 1
    return [first[:n] for n in range(lead, -1, -1)]


def _pick(
    metric: str,
    continuations: tuple[str, ...],
    lls: list[float],
    unconditional: list[float] | None,
    evidence: tuple[float, set[int]] | None,
) -> int:
    """The choice ``metric`` scored, from the choices' loglikelihoods. ``evidence`` is the row's
    value of the metric and the right choices: of the possible delimiters, the first whose pick
    lm-eval's verdict confirms wins."""
    if metric == MUTUAL_INFO and unconditional is not None:
        return _argmax([c - u for c, u in zip(lls, unconditional, strict=True)])
    length = _LENGTHS.get(metric)
    if length is None:
        return _argmax(lls)
    picks = [
        _argmax(_normalised(lls, [length(c[len(d) :]) for c in continuations]))
        for d in _delimiters(continuations)
    ]
    if evidence is not None:
        value, gold = evidence
        for pick in picks:
            if (pick in gold) == (value == 1):
                return pick
    return picks[0]


def _mutual_info_split(args: list[list[Any]], row: dict[str, Any]) -> int | None:
    """How many requests are the choices when the row also holds acc_mutual_info's requests
    without context (lm-eval appends ``("", continuation)`` per choice), else None."""
    names = row.get("metrics") or []
    n = len(args) // 2
    if MUTUAL_INFO not in names or not n or len(args) != 2 * n:
        return None
    tail = args[n:]
    if all(a[0] == "" and a[1] == b[1] for a, b in zip(tail, args[:n], strict=True)):
        return n
    return None


def parse_sample(row: dict[str, Any], task: str, metric: str | None = None) -> Sample:
    """A row of lm-eval's samples JSONL (``doc``, ``target``, ``arguments``, ``resps``,
    ``filtered_resps``, ``filter``, ``metrics`` and the metrics' values), seen through
    ``metric`` (a metric name, ``"acc_norm"``; default: the row's first): its score, and of a
    multiple-choice row the choice it picked."""
    args = _arguments(row)
    prompt = _prompt_text(args[0][0]) if args and args[0] else ""
    filtered = row.get("filtered_resps")
    scored = _metric_value(row, metric)
    choices: tuple[str, ...] = ()
    chosen = None
    generation = None
    if len(args) > 1 and all(len(a) > 1 and isinstance(a[1], str) for a in args):
        # Multiple choice: one (context, continuation) request per choice.
        split = _mutual_info_split(args, row)
        choices = tuple(a[1] for a in args[:split])
        # Each filtered response is (loglikelihood, is_greedy).
        lls = [as_float(f[0] if isinstance(f, list) and f else f) for f in filtered or []]
        scores = [v for v in lls if v is not None]
        if len(scores) == len(args):
            gold = _gold(row.get("target"), choices)
            chosen = _pick(
                metric or (scored[0] if scored else "acc"),
                choices,
                scores[: len(choices)],
                scores[len(choices) :] if split else None,
                (scored[1], gold) if scored and gold is not None else None,
            )
        answer = choices[chosen].strip() if chosen is not None else _first_text(filtered)
    else:
        generation = _first_text(row.get("resps"))
        answer = _first_text(filtered)
    target, target_index = _target(row.get("target"), choices)
    score = f"{scored[0]}={scored[1]:g}" if scored else ""
    correct = None if not scored else True if scored[1] == 1 else False if scored[1] == 0 else None
    return Sample(
        task=task,
        doc_id=row.get("doc_id"),
        filter=str(row.get("filter") or ""),
        prompt=prompt,
        choices=choices,
        chosen=chosen,
        target_index=target_index,
        generation=generation,
        answer=answer,
        target=target,
        correct=correct,
        score=score,
    )
