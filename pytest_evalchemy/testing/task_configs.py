"""The task configs a TaskManager would hand to ``simple_evaluate``, as plain comparable data,
without downloading a data set: to check that two TaskManagers (lm-eval's default one and the
one ``task_index.task_manager`` builds) resolve names to identical configs. Imports lm-eval."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..run.lmeval import task_index


def _plain(value: Any) -> Any:
    """JSON-like data; a function (``!function utils.process_docs``) becomes its module and name,
    which is what makes two loads of the same YAML equal."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # Before the dict case: lm-eval's TaskConfig is a dataclass that subclasses dict (and
        # lm-eval sets attributes beyond its fields): its attributes are the config.
        return {k: _plain(v) for k, v in sorted(vars(value).items())}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(value):
        return f"<function {getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value)}>"
    return value


@contextmanager
def _no_download() -> Iterator[None]:
    # ConfigurableTask downloads its data set as soon as it is built; the config is all we need.
    with task_index.configs_only():
        yield


def _group(group: Any) -> dict[str, Any]:
    fields = ("name", "alias", "aggregate_metric_list", "metadata", "_config")
    out = {f: _plain(getattr(group, f, None)) for f in fields}
    out["children"] = [getattr(c, "task_name", None) or c.name for c in group]
    return out


def config_snapshot(tm: Any, names: Sequence[str]) -> dict[str, Any]:
    """``{"tasks": {name: config}, "groups": {name: config}, "group_map": ...}`` of
    ``tm.load(names)``."""
    with _no_download():
        loaded = tm.load(list(names))
    return {
        "tasks": {n: _plain(t.config) for n, t in sorted(loaded["tasks"].items())},
        "groups": {n: _group(g) for n, g in sorted(loaded.get("groups", {}).items())},
        "group_map": _plain(loaded.get("group_map", {})),
    }
