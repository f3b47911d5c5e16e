"""What the task YAMLs on the include path declare, read without importing lm-eval: task
names (for config validation) and output types (a generation-only run needs no tokenizer)."""

from __future__ import annotations

import csv
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
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


# ---------------------------------------------------------------- data set sizes


@functools.lru_cache(maxsize=8)
def _paths(paths: tuple[Path, ...]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in paths:
        for path in sorted(Path(root).rglob("*.yaml")):
            task = _read(path).get("task")
            if isinstance(task, str):
                found.setdefault(task, path)
    return found


def _merged(path: Path, depth: int = 0) -> dict[str, Any]:
    """A YAML with its ``include`` chain applied (the including file wins), as lm-eval does."""
    data = _read(path)
    include = data.get("include")
    if isinstance(include, str) and depth < 5:
        parent = (path.parent / include).resolve()
        data = {**_merged(parent, depth + 1), **data}
    return data


def _declaring(path: Path, key: str, depth: int = 0) -> Path:
    """The file of ``path``'s include chain that sets ``key`` (relative paths in it are
    relative to that file)."""
    data = _read(path)
    include = data.get("include")
    if key in data or not isinstance(include, str) or depth >= 5:
        return path
    return _declaring((path.parent / include).resolve(), key, depth + 1)


def _count_rows(path: Path) -> int | None:
    """Rows of a local JSON Lines, JSON list or CSV file; None for anything else."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as f:
                return sum(1 for line in f if line.strip())
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return len(data) if isinstance(data, list) else None
        if path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return max(0, sum(1 for row in csv.reader(f) if row) - 1)
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class TaskData:
    """The sizes of a task's evaluation split and few-shot source, read from local files."""

    yaml: Path
    eval_split: str
    eval_size: int | None
    fewshot_split: str | None
    fewshot_size: int | None

    @property
    def max_fewshot(self) -> int | None:
        """The most few-shot examples lm-eval can draw: one fewer when the few-shot source
        is the evaluated split (it leaves the current document out)."""
        if self.fewshot_size is None:
            return None
        same = self.fewshot_split == self.eval_split
        return max(0, self.fewshot_size - 1) if same else self.fewshot_size


def task_data(name: str, paths: Iterable[Path]) -> TaskData | None:
    """What the local data files of task ``name`` hold (a task of ``paths`` whose YAML names
    its files in ``dataset_kwargs.data_files``); None when its data is not local (a hub
    data set): nothing is downloaded or run to find out."""
    path = _paths(tuple(Path(p).resolve() for p in paths)).get(name)
    if path is None:
        return None
    data = _merged(path)
    files = (data.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(files, (str, list)):
        files = {"train": files}  # datasets' rule: unnamed files are the train split
    if not isinstance(files, dict):
        return None
    base = _declaring(path, "dataset_kwargs").parent

    def size(split: str | None) -> int | None:
        value = files.get(split) if split else None
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            return None
        counts = [_count_rows((base / str(n)).resolve()) for n in names]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    eval_split = data.get("test_split") or data.get("validation_split")
    if not isinstance(eval_split, str):
        return None
    fewshot = data.get("fewshot_split") or data.get("training_split")
    fewshot = fewshot or data.get("validation_split") or eval_split
    return TaskData(
        yaml=path,
        eval_split=eval_split,
        eval_size=size(eval_split),
        fewshot_split=fewshot,
        fewshot_size=size(fewshot),
    )


# ---------------------------------------------------------------- what a name brings in


@dataclass(frozen=True)
class _Declared:
    """The tasks, tags and groups the YAMLs under the include paths declare, each YAML read
    with its ``include`` chain applied."""

    tasks: dict[str, list[Path]]  # task name -> the YAMLs that define it
    tags: dict[str, list[str]]  # tag -> the tasks that carry it
    groups: dict[str, list[tuple[Path, Any]]]  # group name -> (its YAML, its ``task`` list)


@functools.lru_cache(maxsize=8)
def _declared(paths: tuple[Path, ...]) -> _Declared:
    found = _Declared({}, {}, {})
    for root in paths:
        for path in sorted(Path(root).rglob("*.yaml")):
            data = _merged(path)
            task, group = data.get("task"), data.get("group")
            if isinstance(task, str):
                found.tasks.setdefault(task, []).append(path)
                tags = data.get("tag")
                for tag in [tags] if isinstance(tags, str) else tags or []:
                    if isinstance(tag, str):
                        found.tags.setdefault(tag, []).append(task)
            elif isinstance(group, str) and isinstance(task, list):
                found.groups.setdefault(group, []).append((path, task))
    return found


def tasks_reached(name: str, paths: Iterable[Path]) -> list[tuple[str, Path]]:
    """(task name, the YAML that names it) of each task of the YAMLs under ``paths`` that
    ``name`` (a task, tag or group) runs: itself, a tag's tasks, a group's members (inline
    ones too), recursively. What lm-eval's own tasks bring in is not followed."""
    declared = _declared(tuple(Path(p).resolve() for p in paths))
    reached: list[tuple[str, Path]] = []
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        reached.extend((current, path) for path in declared.tasks.get(current, ()))
        stack.extend(declared.tags.get(current, ()))
        for path, members in declared.groups.get(current, ()):
            pending = list(members)
            while pending:
                member = pending.pop()
                if isinstance(member, str):
                    stack.append(member)
                elif isinstance(member, dict) and isinstance(member.get("group"), str):
                    stack.append(member["group"])
                    inner = member.get("task")
                    pending.extend(inner if isinstance(inner, list) else [inner])
                elif isinstance(member, dict) and isinstance(member.get("task"), str):
                    # An inline task of the group: its name is given in the group's YAML.
                    reached.append((member["task"], path))
                    stack.append(member["task"])
    return reached
