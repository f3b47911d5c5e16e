"""What the test server's simulated model knows about the offline benchmarks.

The server answers each document of ``benchmarks/`` right or wrong according to
``AnswerEntry.known``, so a test can compute the exact accuracy it must see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
