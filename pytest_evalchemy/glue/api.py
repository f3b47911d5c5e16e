"""The ``evalchemy`` fixture: run an lm-eval task from a test of your own, against the run's
checked endpoint, with the run's settings, into the same results folder and summary as the
config's items::

    def test_arc_beats_baseline(evalchemy):
        r = evalchemy.run("mini_arc", num_fewshot=5, limit=50)
        assert r.metric("acc") > 0.6

Each ``run()`` is one summary entry keyed ``<test name>/<name>`` (``name`` defaults to the
task), with its files under ``items/<test name>/<name>/``. The record travels to the
controller in the test's ``user_properties``, so it works under xdist like a config item.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..core.config import PlannedItem, parse_config
from ..core.errors import ConfigError
from ..core.record import is_stderr, split_metric, stderr_key
from ..judge.gating import DEFAULT_CONFIDENCE, check_properties, metric_interval
from ..run.evaluation import ItemFailed, base_record, build_request
from .state import API_RECORD_PROPERTY

if TYPE_CHECKING:
    from ..run.evaluation import RunSettings
    from ..run.lmeval.harness import ItemRequest
    from .state import EvalchemyState

# A test name becomes a folder name: parametrize ids may hold any character.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\[\]-]")

Execute = Callable[..., None]


@dataclass(frozen=True)
class EvalResult:
    """What ``evalchemy.run()`` returns: the item's summary record and where its files are."""

    key: str  # the summary key, "<test name>/<name>"
    record: dict[str, Any]
    path: Path  # the item's folder: results.json, lm_eval.log, samples_*.jsonl

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """lm-eval's metrics by lm-eval task: ``{"mini_arc": {"acc,none": 0.75, ...}}``."""
        return self.record.get("metrics") or {}

    @property
    def n_samples(self) -> dict[str, dict[str, int]]:
        return self.record.get("n_samples") or {}

    def _values(self, task: str | None) -> tuple[str, dict[str, Any]]:
        metrics = self.metrics
        if task is None:
            asked = self.record.get("lm_eval_tasks") or []
            if len(asked) == 1 and asked[0] in metrics:
                task = asked[0]  # a group reports its subtasks too; the group is what was asked
            elif len(metrics) == 1:
                task = next(iter(metrics))
            else:
                raise KeyError(
                    f"{self.key} ran several lm-eval tasks ({', '.join(metrics) or 'none'}): "
                    "pass task=, e.g. r.metric('acc', task=...)"
                )
        if task not in metrics:
            raise KeyError(f"{self.key}: no lm-eval task {task!r}; it ran: {', '.join(metrics)}")
        return task, metrics[task]

    def _metric_key(self, values: dict[str, Any], name: str) -> str:
        # "acc" means lm-eval's "acc,none", or the only filter the metric has.
        if name in values:
            return name
        if "," not in name:
            if f"{name},none" in values:
                return f"{name},none"
            matches = [k for k in values if split_metric(k)[0] == name]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise KeyError(
                    f"{self.key}: {name!r} has several filters ({', '.join(matches)}): name one, "
                    f"e.g. {matches[0]!r}"
                )
        reported = ", ".join(k for k in values if not is_stderr(k))
        raise KeyError(f"{self.key}: no metric {name!r}; reported: {reported}")

    def metric(self, name: str, task: str | None = None) -> float:
        """A metric's value: ``"acc"`` (the ``none`` filter), ``"exact_match,strict-match"``."""
        _, values = self._values(task)
        return float(values[self._metric_key(values, name)])

    def stderr(self, name: str, task: str | None = None) -> float | None:
        """A metric's standard error, None when lm-eval could not compute one."""
        _, values = self._values(task)
        value = values.get(stderr_key(self._metric_key(values, name)))
        return float(value) if isinstance(value, (int, float)) else None

    def interval(
        self, name: str, task: str | None = None, confidence: float = DEFAULT_CONFIDENCE
    ) -> tuple[float, float] | None:
        """The metric's confidence interval as the gate uses it: Wilson for a mean of 0/1
        scores, else value ± z·stderr (None without either)."""
        lm_task, values = self._values(task)
        found = metric_interval(self.record, lm_task, self._metric_key(values, name), confidence)
        return (found.low, found.high) if found is not None else None


class Evalchemy:
    """The ``evalchemy`` fixture's object, one per test."""

    def __init__(
        self,
        node: pytest.Item,
        state: EvalchemyState,
        execute: Execute,
        adjust: Callable[[ItemRequest], ItemRequest],
    ) -> None:
        # The plugin hands in how an item runs, so this module needs no import of the plugin.
        self._node = node
        self._state = state
        self._execute = execute
        self._adjust = adjust
        self._keys: set[str] = set()

    @property
    def run_id(self) -> str:
        return self._state.run_id

    @property
    def results_dir(self) -> Path:
        """The run's results folder, ``<output>/<run_id>``."""
        return self._state.paths.root

    @property
    def settings(self) -> RunSettings | None:
        """The run's settings (endpoint, model, command-line overrides)."""
        return self._state.settings

    def _plan(self, tasks: list[str], name: str, entry: dict[str, Any]) -> PlannedItem:
        where = Path(f"{self._node.nodeid}: evalchemy.run()")
        try:
            # The config's own schema checks the arguments: one rule for both ways in.
            parsed = parse_config(where, {"tasks": {name: {"tasks": tasks, **entry}}})
        except ConfigError as exc:
            pytest.fail(str(exc), pytrace=False)
        benchmark = _UNSAFE.sub("_", self._node.name)
        return PlannedItem(benchmark, parsed.tasks[0], enabled=True)

    def run(
        self, task: str | Sequence[str], *, name: str | None = None, **entry: Any
    ) -> EvalResult:
        """Run lm-eval task(s) ``task`` with the settings a config's task entry takes
        (``num_fewshot``, ``limit``, ``batch_size``, ``log_samples``, ``thresholds``,
        ``max_drop``, ``max_invalid_share``, ``metrics``, ``description``). Fails the test
        when the result is incomplete, a threshold misses or too many of its answers are
        broken; returns the result otherwise."""
        tasks = [task] if isinstance(task, str) else list(task)
        name = _UNSAFE.sub("_", name or "+".join(tasks))
        planned = self._plan(tasks, name, entry)
        if planned.key in self._keys:
            pytest.fail(
                f"evalchemy.run(): {planned.key} already ran in this test; give each run its "
                "own name=",
                pytrace=False,
            )
        self._keys.add(planned.key)
        settings = self._state.settings_for(planned)
        if settings is None:
            pytest.fail("evalchemy.run(): the endpoint check did not run", pytrace=False)
        request = build_request(planned, settings)  # once per item
        record = base_record(planned, settings, request)
        record["nodeid"] = self._node.nodeid
        try:
            self._execute(planned, settings, record, self._adjust, request)
        except ItemFailed as exc:
            pytest.fail(str(exc), pytrace=False)
        finally:
            self._publish(planned.key, record)
        path = settings.paths.item_dir(planned.benchmark, planned.task.key)
        return EvalResult(planned.key, record, path)

    def _publish(self, key: str, record: dict[str, Any]) -> None:
        # Like a config item's record: user_properties reach the controller through xdist
        # (and JUnit XML); a test may run several, so they are appended.
        props = self._node.user_properties
        props.append((API_RECORD_PROPERTY, json.dumps({"key": key, "record": record}, default=str)))
        for lm_task, values in record.get("metrics", {}).items():
            props.extend((f"{lm_task}:{metric}", value) for metric, value in values.items())
        props.extend(check_properties(record.get("checks", ())))
