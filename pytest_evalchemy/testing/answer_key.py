"""What the test server's simulated model knows about the offline benchmarks.

The server answers each document of ``benchmarks/`` right or wrong according to
``AnswerEntry.known``, so a test can compute the exact accuracy it must see.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Task name -> kind; the JSONL file is benchmarks/data/<task>.jsonl and the task name is the YAML's ``task``.
TASK_KINDS: dict[str, Literal["choice", "generate"]] = {
    "mini_arc": "choice",
    "mini_hellaswag": "choice",
    "mini_mmlu": "choice",
    "mini_gsm8k": "generate",
}
# lm-eval's default target_delimiter: a choice continuation is " " + choice text.
TARGET_DELIMITER = " "
MMLU_LETTERS = ("A", "B", "C", "D")
# mini_gsm8k's generation_kwargs.until: the server cuts a generation at these, so answers must not contain them.
GSM8K_STOP = ("Question:", "</s>", "<|im_end|>")


@dataclass(frozen=True)
class AnswerEntry:
    """One document of an offline benchmark, as the test server sees it."""

    task: str  # lm-eval task name, e.g. "mini_arc"
    index: int  # position of the document in the task's evaluation split
    marker: str  # text that appears verbatim in lm-eval's prompt for this doc; unique, not a substring of another
    kind: Literal["choice", "generate"]
    correct: str  # choice: the right continuation as it ends the prompt (" Paris"); generate: the right generation
    wrong: str  # choice: unused (""); generate: the generation given when the doc is not known
    known: bool  # whether the simulated model gets this document right


def default_known(task: str, index: int) -> bool:
    """The simulated model's knowledge: every fourth document (index 3, 7, ...) is answered wrong."""
    return index % 4 != 3


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Documents of one task in file order, which is lm-eval's order for the test split."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _choice_entry(task: str, doc: dict[str, Any]) -> tuple[str, list[str], str]:
    """(marker, continuations as lm-eval requests them, the correct continuation) for a choice doc."""
    if task == "mini_arc":
        texts = list(doc["choices"]["text"])
        gold = doc["choices"]["label"].index(doc["answerKey"])
        marker = doc["question"]
    elif task == "mini_hellaswag":
        texts, gold, marker = list(doc["endings"]), int(doc["label"]), doc["ctx"]
    elif task == "mini_mmlu":
        # The choices are the letters; the choice texts are part of the prompt.
        texts, gold, marker = list(MMLU_LETTERS), int(doc["answer"]), doc["question"]
    else:
        raise ValueError(f"{task}: not a choice task")
    continuations = [TARGET_DELIMITER + t for t in texts]
    return marker, continuations, continuations[gold]


def _generations(doc: dict[str, Any]) -> tuple[str, str]:
    """(right, wrong) generations for a gsm8k doc.

    Both keep the doc's reasoning and end on "#### N", so strict-match takes N from "#### N" and
    flexible-extract (last number) takes N too; wrong uses N + 1, which both filters score as wrong.
    Neither may contain a stop string (GSM8K_STOP), or the server would cut it short: _validate checks.
    """
    reasoning, _, answer = doc["answer"].rpartition("\n#### ")
    # gsm8k answers are integers by construction; a ValueError here flags bad data.
    value = int(answer)
    return f" {reasoning}\n#### {value}\n\n", f" {reasoning}\n#### {value + 1}\n\n"


def _validate(entries: list[AnswerEntry], choices: dict[tuple[str, int], list[str]]) -> None:
    """Raise ValueError unless every doc can be told apart by the server.

    Markers must be unique and not substrings of each other (the server finds the doc by searching
    the prompt for its marker); within a choice doc the continuations must be distinct and no wrong
    one may end with the correct one (the server matches the request's end with ``endswith``).
    """
    problems: list[str] = []
    for e in entries:
        if not e.marker or e.marker != e.marker.strip():
            problems.append(f"{e.task}[{e.index}]: marker is empty or has surrounding whitespace")
    for a in entries:
        for b in entries:
            if a is not b and a.marker in b.marker:
                rel = "duplicates" if a.marker == b.marker else "is a substring of"
                problems.append(
                    f"{a.task}[{a.index}] marker {rel} {b.task}[{b.index}] marker: {a.marker!r}"
                )
    for e in entries:
        if e.kind == "generate" and any(stop in e.correct + e.wrong for stop in GSM8K_STOP):
            problems.append(f"{e.task}[{e.index}]: answer contains a stop string {GSM8K_STOP}")
        conts = choices.get((e.task, e.index))
        if conts is None:
            continue
        if len(set(conts)) != len(conts):
            problems.append(f"{e.task}[{e.index}]: choices are not distinct")
        for c in conts:
            if c != e.correct and c.endswith(e.correct):
                problems.append(
                    f"{e.task}[{e.index}]: wrong choice {c!r} ends with correct {e.correct!r}"
                )
    if problems:
        raise ValueError("answer key is ambiguous:\n" + "\n".join(problems))


def load_answer_key(
    benchmarks_dir: Path, known: Callable[[str, int], bool] = default_known
) -> list[AnswerEntry]:
    """One AnswerEntry per document of the four offline benchmarks in ``benchmarks_dir``.

    Plain json only (no lm-eval, no datasets): this runs inside the light test server.
    ``index`` is the line position in the JSONL file, which is the order lm-eval evaluates the test split in.
    """
    entries: list[AnswerEntry] = []
    choices: dict[tuple[str, int], list[str]] = {}
    for task, kind in TASK_KINDS.items():
        for index, doc in enumerate(_read_jsonl(Path(benchmarks_dir) / "data" / f"{task}.jsonl")):
            if kind == "choice":
                marker, conts, correct = _choice_entry(task, doc)
                choices[(task, index)] = conts
                wrong = ""
            else:
                marker = doc["question"]
                correct, wrong = _generations(doc)
            entries.append(
                AnswerEntry(task, index, marker, kind, correct, wrong, known(task, index))
            )
    _validate(entries, choices)
    return entries


def expected_accuracy(entries: list[AnswerEntry], task: str, limit: int | None) -> float:
    """Accuracy the simulated model must score on ``task`` evaluated with lm-eval's ``limit``.

    lm-eval evaluates the first ``limit`` documents (all when None), so this is the fraction of
    ``known`` among them.
    """
    docs = sorted((e for e in entries if e.task == task), key=lambda e: e.index)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        docs = docs[:limit]
    if not docs:
        raise ValueError(f"no documents for task {task!r}")
    return sum(e.known for e in docs) / len(docs)
