"""lm-eval's logged samples: an item's samples files, their rows, and a row reduced to what a
reader compares (prompt, answer, target, right or wrong). Read by the gate's pairing and by
the reports. Imports nothing else of the package but ``core``."""

from __future__ import annotations

import json
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
    chosen: int | None  # the choice with the highest loglikelihood
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


def _score(row: dict[str, Any]) -> tuple[str, bool | None]:
    names = row.get("metrics") or []
    for name in names if isinstance(names, list) else []:
        value = as_float(row.get(name))
        if value is not None:
            correct = True if value == 1 else False if value == 0 else None
            return f"{name}={value:g}", correct
    return "", None


def parse_sample(row: dict[str, Any], task: str) -> Sample:
    """A row of lm-eval's samples JSONL (``doc``, ``target``, ``arguments``, ``resps``,
    ``filtered_resps``, ``filter``, ``metrics`` and the metrics' values)."""
    args = _arguments(row)
    prompt = _prompt_text(args[0][0]) if args and args[0] else ""
    filtered = row.get("filtered_resps")
    choices: tuple[str, ...] = ()
    chosen = None
    generation = None
    if len(args) > 1 and all(len(a) > 1 and isinstance(a[1], str) for a in args):
        # Multiple choice: one (context, continuation) request per choice; lm-eval's answer
        # is the continuation with the highest loglikelihood.
        choices = tuple(a[1] for a in args)
        # Each filtered response is (loglikelihood, is_greedy).
        lls = [as_float(f[0] if isinstance(f, list) and f else f) for f in filtered or []]
        scores = [v for v in lls if v is not None]
        if len(scores) == len(choices):
            chosen = scores.index(max(scores))
        answer = choices[chosen].strip() if chosen is not None else _first_text(filtered)
    else:
        generation = _first_text(row.get("resps"))
        answer = _first_text(filtered)
    target, target_index = _target(row.get("target"), choices)
    score, correct = _score(row)
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
