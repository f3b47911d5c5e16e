"""Generated documents of the ``perf_mc`` task (no files, no network)."""

from __future__ import annotations

from typing import Any

import datasets

N_DOCS = 100


def perf_mc(**kwargs: Any) -> datasets.DatasetDict:
    """``n_docs`` (default ``N_DOCS``) four-choice questions (lm-eval passes the task's
    metadata as kwargs)."""
    n_docs = int(kwargs.get("n_docs", N_DOCS))
    rows = [
        {
            "question": f"Perf question {i}: which colour is item {i}?",
            "choices": [f"colour {(i + j) % 7} of shade {j}" for j in range(4)],
            "gold": i % 4,
        }
        for i in range(n_docs)
    ]
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}
    )
