"""Loaders for the offline mini benchmarks in ``data/``.

The task YAMLs name these functions with ``custom_dataset: !function offline_data.<fn>``.
lm-eval resolves ``!function`` relative to the YAML file, and the JSONL files are found
relative to this module, so the tasks work from any working directory (a relative
``data_files`` path would resolve against the current directory instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

DATA_DIR = Path(__file__).resolve().parent / "data"


def _load(name: str) -> datasets.DatasetDict:
    """Read ``data/<name>.jsonl`` into a DatasetDict with one ``test`` split, in file order."""
    with (DATA_DIR / f"{name}.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # Dataset.from_list keeps the file order (the answer key relies on it) and, unlike
    # load_dataset("json"), writes no arrow cache under HF_HOME.
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}
    )


# lm-eval calls these as fn(**metadata, **dataset_kwargs), e.g. fn(version=1.0): ignore the kwargs.
def mini_arc(**kwargs: Any) -> datasets.DatasetDict:
    """ARC-style science multiple choice."""
    return _load("mini_arc")


def mini_hellaswag(**kwargs: Any) -> datasets.DatasetDict:
    """HellaSwag-style sentence completion."""
    return _load("mini_hellaswag")


def mini_mmlu(**kwargs: Any) -> datasets.DatasetDict:
    """MMLU-style four-choice questions over mixed subjects."""
    return _load("mini_mmlu")


def mini_gsm8k(**kwargs: Any) -> datasets.DatasetDict:
    """GSM8K-style arithmetic word problems."""
    return _load("mini_gsm8k")
