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


def _load(name: str, data_files: dict[str, str] | None = None) -> datasets.DatasetDict:
    """Read the YAML's ``data_files`` test file (relative to this folder; default
    ``data/<name>.jsonl``) into a DatasetDict with one ``test`` split, in file order."""
    path = DATA_DIR.parent / data_files["test"] if data_files else DATA_DIR / f"{name}.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # Dataset.from_list keeps the file order (the answer key relies on it) and, unlike
    # load_dataset("json"), writes no arrow cache under HF_HOME.
    return datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}
    )


# lm-eval calls these as fn(**metadata, **dataset_kwargs), e.g. fn(version=1.0, data_files=...).
def mini_arc(**kwargs: Any) -> datasets.DatasetDict:
    """ARC-style science multiple choice."""
    return _load("mini_arc", kwargs.get("data_files"))


def mini_hellaswag(**kwargs: Any) -> datasets.DatasetDict:
    """HellaSwag-style sentence completion."""
    return _load("mini_hellaswag", kwargs.get("data_files"))


def mini_mmlu(**kwargs: Any) -> datasets.DatasetDict:
    """MMLU-style four-choice questions over mixed subjects."""
    return _load("mini_mmlu", kwargs.get("data_files"))


def mini_gsm8k(**kwargs: Any) -> datasets.DatasetDict:
    """GSM8K-style arithmetic word problems."""
    return _load("mini_gsm8k", kwargs.get("data_files"))
