"""What the task YAMLs on the include path declare, read without importing lm-eval: task
names (for config validation) and output types (a generation-only run needs no tokenizer)."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

# The C loader (when PyYAML has it) reads lm-eval's ~14,000 task YAMLs several times faster.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _TolerantLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Reads lm-eval YAMLs, whose ``!function`` tags a plain safe loader rejects."""


def _any_tag(loader: Any, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)


_TolerantLoader.add_multi_constructor("!", _any_tag)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_TolerantLoader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}  # lm-eval skips broken YAMLs quietly; so does the index
    return data if isinstance(data, dict) else {}


def _output_type(path: Path, data: dict[str, Any], depth: int = 0) -> str | None:
    if "output_type" in data or depth > 5:
        return data.get("output_type")
    include = data.get("include")
    if isinstance(include, str):
        parent = (path.parent / include).resolve()
        return _output_type(parent, _read(parent), depth + 1)
    return None


@functools.lru_cache(maxsize=8)
def _index(paths: tuple[Path, ...]) -> dict[str, str | None]:
    index: dict[str, str | None] = {}
    for root in paths:
        for path in sorted(Path(root).rglob("*.yaml")):
            data = _read(path)
            task = data.get("task")
            if isinstance(task, str):
                index.setdefault(task, _output_type(path, data))
            group = data.get("group")
            if isinstance(group, str):
                index.setdefault(group, None)
    return index


def known_tasks(paths: Iterable[Path]) -> dict[str, str | None]:
    """``{task or group name: output_type or None}`` for the YAMLs under ``paths``."""
    return _index(tuple(Path(p).resolve() for p in paths))


def needs_tokenizer(task_names: Iterable[str], paths: Iterable[Path]) -> bool:
    """False only when every task is known to be a generation task: loglikelihood requests
    (and tasks we cannot see without lm-eval's full index) need a tokenizer."""
    index = known_tasks(paths)
    return any(index.get(name) != "generate_until" for name in task_names)
