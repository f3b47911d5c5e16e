"""The checks of a config's task names and few-shot counts against the task YAMLs, before any
request: by the plugin at collection and by ``run_evalchemy.sh --validate``. Reads files only
(no lm-eval import, no task code, no download)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ...core.config import EvalConfig, plan_items
from ...core.errors import Problem
from ...core.results import file_name_problem
from ..lmeval.task_index import lm_eval_tasks_dir
from ..lmeval.task_index import scan as _scan
from . import catalog


def _known(names: set[str], roots: Iterable[Path], *, full_read: bool) -> set[str]:
    """Which of ``names`` the YAMLs under ``roots`` define (tasks, groups or tags)."""
    roots = [Path(r) for r in roots if Path(r).is_dir()]
    scans = [_scan(r.resolve()) for r in roots]
    if full_read:
        folders = roots
    else:
        folders = sorted({f for s in scans for n in names for f in s.defined.get(n, ())})
    defined = catalog.known_tasks(folders) if folders else {}
    return {n for n in names if n in defined or any(n in s.tags for s in scans)}


@dataclass
class NameCheck:
    """Task names of a config that no YAML defines: errors, and warnings for disabled items."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    public_checked: bool = True


def check_task_names(config: EvalConfig) -> NameCheck:
    """Each lm-eval task name the config uses must be a task of the include paths (the offline
    benchmarks first) or of the installed lm-eval."""
    enabled_keys = {item.task.key for item in plan_items(config) if item.enabled}
    keys = {t.key for t in config.tasks}
    # (where, name, whether an enabled item uses it)
    uses: list[tuple[str, str, bool]] = []
    for bench in config.benchmarks:
        for i, name in enumerate(bench.tasks):
            if name not in keys:
                uses.append((f"benchmarks.{bench.name}.tasks[{i}]", name, bench.enabled))
    for task in config.tasks:
        for i, name in enumerate(task.tasks):
            uses.append((f"tasks.{task.key}.tasks[{i}]", name, task.key in enabled_keys))
    wanted = {name for _, name, _ in uses}
    include = config.lm_eval_include_paths
    known = _known(wanted, include, full_read=True)
    result = NameCheck()
    _check_file_names(config, uses, result)
    public = lm_eval_tasks_dir()
    if public is None:
        result.public_checked = False
    elif wanted - known:
        known |= _known(wanted - known, [public], full_read=False)
    unknown = [use for use in uses if use[1] not in known]
    if not unknown or public is None:
        return result  # without lm-eval, a name the include paths lack cannot be judged
    vocabulary = keys | set(catalog.known_tasks(include)) | set(_scan(public.resolve()).defined)
    for where, name, enabled in unknown:
        close = difflib.get_close_matches(name, sorted(vocabulary), n=3, cutoff=0.75)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        message = (
            f"unknown task {name!r}: not a task of this config, of the include paths "
            f"({', '.join(str(p) for p in include)}) or of lm-eval{hint}"
        )
        if enabled:
            result.errors.append(Problem(config.path, where, message))
        else:
            result.warnings.append(Problem(config.path, where, message + " (disabled)"))
    return result


def _check_file_names(
    config: EvalConfig, uses: list[tuple[str, str, bool]], result: NameCheck
) -> None:
    """A task name of the include paths' YAMLs that a config name runs becomes the name of a
    file of the results folder (``samples_<task>.jsonl``): one that would leave the folder
    or cannot name a file is refused, naming its YAML."""
    bad: dict[tuple[Path, str], tuple[str, bool]] = {}  # (YAML, task) -> (use, enabled)
    for where, name, enabled in uses:
        for task, path in catalog.tasks_reached(name, config.lm_eval_include_paths):
            if file_name_problem(task) is not None:
                first = bad.get((path, task))
                if first is None or (enabled and not first[1]):
                    bad[(path, task)] = (where, enabled)  # an enabled use is the one named
    for (path, task), (where, enabled) in bad.items():
        fix = re.sub(r"[^A-Za-z0-9_-]+", "_", task).strip("_") or "my_task"
        problem = Problem(
            path,
            "task",
            f"{task!r} cannot name a file: it {file_name_problem(task)}, and the run writes "
            f"samples_<task>.jsonl with it ({where} of {config.path} runs it); rename the task "
            f"in this YAML, e.g. to {fix!r}",
        )
        if enabled:
            result.errors.append(problem)
        else:
            result.warnings.append(Problem(path, "task", problem.message + " (disabled)"))


@dataclass
class DataCheck:
    """What the tasks' local data files say about the config: a ``num_fewshot`` the few-shot
    source cannot supply (errors), a ``limit`` above the data set's size (warnings), and the
    task names whose data is not local, left unchecked."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def unchecked_note(names: list[str]) -> str:
    return (
        f"num_fewshot and limit not checked against the data of {', '.join(names)}: their "
        "data is not local (a hub data set is not downloaded to check it)"
    )


def check_task_data(config: EvalConfig, limit: int | float | None = None) -> DataCheck:
    """Check the enabled items' ``num_fewshot`` and ``limit`` (``limit``: the command line's,
    which replaces the config's) against the sizes of their tasks' local data files; reads
    files only (no task code, no download, no request)."""
    result = DataCheck()
    include = config.lm_eval_include_paths
    for item in plan_items(config):
        if not item.enabled:
            continue
        task = item.task
        where = f"tasks.{task.key}" if task.configured else f"benchmarks.{item.benchmark}"
        asked = task.limit if limit is None else limit
        for name in task.tasks:
            data = catalog.task_data(name, include)
            if data is None:
                if name not in result.unchecked:
                    result.unchecked.append(name)
                continue
            most = data.max_fewshot
            if task.num_fewshot is not None and most is not None and task.num_fewshot > most:
                pool = f"{data.fewshot_size} documents in its {data.fewshot_split!r} split"
                if data.fewshot_split == data.eval_split:
                    pool += ", less the one being evaluated"
                result.errors.append(
                    Problem(
                        config.path,
                        f"{where}.num_fewshot",
                        f"{task.num_fewshot} few-shot examples asked of {name!r}, whose few-shot "
                        f"source ({data.yaml}) can give at most {most} ({pool}); lower num_fewshot",
                    )
                )
            size = data.eval_size
            if isinstance(asked, int) and size is not None and asked > size:
                source = (
                    "--evalchemy-limit" if limit is not None else f"{config.path}: {where}.limit"
                )
                result.warnings.append(
                    f"{source}: limit {asked} is above the size of {name!r} ({size} documents "
                    f"in its {data.eval_split!r} split): all {size} are evaluated"
                )
    return result
