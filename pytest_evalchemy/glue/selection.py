"""Which items ``-k`` and ``-m`` keep, decided before collection.

The endpoint check runs when the session starts, before xdist starts its workers (they get its
answer), and under xdist the controller collects nothing: what ``-k`` and ``-m`` deselect is
only known to the workers, too late. The items are fully known from the config, though, so the
expressions are evaluated here the way pytest evaluates them (its own expression language and
matchers) against the names pytest gives the items: the folders below the rootdir, the config
file, the benchmark, the task and its lm-eval tasks, and the item's markers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.mark import KeywordMatcher, MarkMatcher
from _pytest.mark.expression import Expression

from ..core.config import PlannedItem
from ..run.evaluation import item_timeout


def selected_keys(
    config: pytest.Config, plan: list[PlannedItem], config_path: Path, timeout: float | None
) -> frozenset[str]:
    """The keys of the enabled items of ``plan`` (from ``config_path``) that ``-k`` and ``-m``
    keep; ``timeout`` is the run's default item timeout (it adds the timeout marker)."""
    enabled = [p for p in plan if p.enabled]
    keyword = (config.option.keyword or "").lstrip()
    markexpr = config.option.markexpr or ""
    try:
        by_keyword = Expression.compile(keyword) if keyword else None
        by_mark = Expression.compile(markexpr) if markexpr else None
    except SyntaxError:
        # pytest itself refuses the expression, with its own message, when it collects.
        return frozenset(p.key for p in enabled)
    folders = _node_names(config, config_path)
    keep = set()
    for planned in enabled:
        marks = [pytest.mark.timeout(t).mark] if (t := item_timeout(planned, timeout)) else []
        names = {*folders, planned.benchmark, planned.task.key, *planned.keywords}
        names.update(mark.name for mark in marks)
        if by_keyword is not None and not by_keyword.evaluate(KeywordMatcher(names)):
            continue
        if by_mark is not None and not by_mark.evaluate(MarkMatcher.from_markers(marks)):
            continue
        keep.add(planned.key)
    return frozenset(keep)


def _node_names(config: pytest.Config, path: Path) -> list[str]:
    """The names of the config file's node and its folders' nodes, without the root folder's
    (pytest's KeywordMatcher leaves out the session and the root folder)."""
    if config.rootpath in path.parents:
        return list(path.relative_to(config.rootpath).parts)
    return list(path.parts[2:])  # outside the rootdir the chain starts at the top folder
