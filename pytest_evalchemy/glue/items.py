"""Collection nodes: the config file, its benchmarks, and one test item per task."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from pytest_timeout import PYTEST_FAILURE_MESSAGE, is_debugging

from ..core.config import PlannedItem
from ..core.record import FINISHED, Status
from ..core.redact import scrub
from ..judge.gating import (
    check_properties,
)
from ..run.evaluation import (
    ItemFailed,
    RunSettings,
    base_record,
    build_request,
    describe_error,
    item_timeout,
    log_warnings,
    run_item,
)
from ..run.lmeval.harness import ItemRequest
from .state import RECORD_PROPERTY, STATE


class EvalConfigFile(pytest.File):
    """The config file: one child per benchmark."""

    def collect(self) -> Iterator[pytest.Collector]:
        state = self.config.stash[STATE]
        benchmarks: dict[str, list[PlannedItem]] = {}
        for item in state.plan:
            benchmarks.setdefault(item.benchmark, []).append(item)
        for name, items in benchmarks.items():
            yield BenchmarkNode.from_parent(self, name=name, planned=items)


class BenchmarkNode(pytest.Collector):
    """A benchmark of the config: one item per task."""

    def __init__(self, *, planned: list[PlannedItem], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    def collect(self) -> Iterator[pytest.Item]:
        for planned in self.planned:
            yield TaskItem.from_parent(self, name=planned.task.key, planned=planned)


class TaskItem(pytest.Item):
    """One (benchmark, task) pair: runs lm-eval and judges the result."""

    def __init__(self, *, planned: PlannedItem, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.extra_keyword_matches.update(planned.keywords)
        if not planned.enabled:
            self.add_marker(pytest.mark.skip(reason=planned.reason))
        timeout = item_timeout(planned, self.config.stash[STATE].options.timeout)
        if timeout is not None:
            # The signal method interrupts lm-eval in the main thread and keeps the worker alive.
            self.add_marker(pytest.mark.timeout(timeout, method="signal"))
        # Set now so that a skip report from setup carries the key too.
        self.user_properties.append(("evalchemy_key", planned.key))

    def runtest(self) -> None:
        state = self.config.stash[STATE]
        settings = state.settings_for(self.planned)
        previous = state.previous.get(self.planned.key)
        if previous is not None and previous.get("status") in FINISHED:
            # A resumed run keeps what finished; nothing is sent for it.
            record = {**previous, "resumed": True}
            self._publish(record)
            if record["status"] == Status.FAILED:
                raise ItemFailed(
                    f"{self.planned.key}: {record.get('message', 'failed')} (from the resumed run)"
                )
            return
        if settings is None:
            raise ItemFailed("the endpoint check did not run; no endpoint information")
        request = build_request(self.planned, settings)  # once per item
        record = base_record(self.planned, settings, request)
        try:
            execute_item(self.planned, settings, record, request_hook(self), request)
        finally:
            self._publish(record)

    def _publish(self, record: dict[str, Any]) -> None:
        # user_properties travel with the report through xdist and into JUnit XML.
        props = [p for p in self.user_properties if p[0] == "evalchemy_key"]
        props.append((RECORD_PROPERTY, json.dumps(record, default=str)))
        props.append(("evalchemy_status", record["status"]))
        for lm_task, values in record.get("metrics", {}).items():
            props.extend((f"{lm_task}:{metric}", value) for metric, value in values.items())
        props.extend(check_properties(record.get("checks", ())))
        self.user_properties[:] = props

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        state = self.config.stash[STATE]
        log = state.paths.item_dir(self.planned.benchmark, self.planned.task.key) / "lm_eval.log"
        if isinstance(excinfo.value, ItemError):
            # The one-line message first, then where lm-eval raised.
            cause = excinfo.value.cause_text(style or self.config.getoption("tbstyle"))
            return f"{excinfo.value}\n{cause}{_log_pointer(log)}"
        if isinstance(excinfo.value, ItemFailed):
            return f"{excinfo.value}\n{_log_pointer(log)}"
        if isinstance(excinfo.value, ItemTimeout):
            return f"{excinfo.value}\n{where_it_was(excinfo.tb)}\n{_log_pointer(log)}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        # pytest 9 needs an int line, or a skipped item crashes the run.
        return self.path, 0, f"{self.planned.benchmark}::{self.planned.task.key}"


class ItemError(Exception):
    """lm-eval raised while running the item; ``cause`` is its traceback, secrets scrubbed."""

    def __init__(self, message: str, cause: list[str] | None = None) -> None:
        super().__init__(message)
        self.cause = cause or []  # traceback.format_exception's lines, chained causes included

    def cause_text(self, style: Any) -> str:
        """Where lm-eval raised: every frame under ``--tb=long``/``native``, the last ones by
        default, none under ``--tb=line``/``no``."""
        if style in ("line", "no") or not self.cause:
            return ""
        lines = self.cause
        frames = [line for line in lines if line.startswith("  File ")]
        if style in ("long", "native") or len(frames) <= CAUSE_FRAMES:
            return "".join(lines)
        # The last frames, where lm-eval and its HTTP client raised, and the exception's line.
        last = lines.index(frames[-CAUSE_FRAMES])
        head = f"where it was raised (last {CAUSE_FRAMES} frames, innermost last; --tb=long shows all):\n"
        return head + "".join(lines[last:])


PYTHON_HEAD = "Traceback (most recent call last):\n"
CAUSE_HEAD = "where it was raised (innermost last):\n"


class ItemTimeout(pytest.fail.Exception):
    """The item ran past its timeout (raised in the main thread by the timer's signal)."""


# The frames a timed-out item reports, innermost last: enough to see where lm-eval was.
WHERE_FRAMES = 20
# The frames of an lm-eval exception an item's report shows by default.
CAUSE_FRAMES = 6


def _log_pointer(path: Path) -> str:
    """Where an item's lm-eval log is, with its last warnings (not its INFO flood)."""
    tail = log_warnings(path)
    shown = "".join(f"\n  {line}" for line in tail)
    head = "last warnings of lm-eval's log" if tail else "lm-eval log"
    return f"{head}: {path}{shown}"


def where_it_was(tb: TracebackType | None) -> str:
    """The item's own stack at its timeout, one line a frame, from ``runtest`` down to the
    frame the timer interrupted (not every thread's stack, nor pytest's long traceback)."""
    frames = [f for f in traceback.extract_tb(tb) if f.name != "_on_timeout"]
    start = next((i for i, f in enumerate(frames) if f.name == "runtest"), 0)
    frames = frames[start:]
    head = "where it was (innermost last"
    if len(frames) > WHERE_FRAMES:
        head += f"; {len(frames) - WHERE_FRAMES} outer frames left out"
        frames = frames[-WHERE_FRAMES:]
    lines = [f"  {f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames]
    return "\n".join([head + "):", *lines])


class TimeoutHooks:
    """pytest-timeout's signal method for config items, without its dump of every thread's
    stack (thousands of lines with lm-eval's threads); the item's own stack is in its failure.
    Registered only when pytest-timeout is, so its hooks are known."""

    @pytest.hookimpl(tryfirst=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> bool | None:
        if not isinstance(item, TaskItem) or settings.method != "signal":
            return None
        if threading.current_thread() is not threading.main_thread():
            return None  # pytest-timeout falls back to its thread method there
        message = PYTEST_FAILURE_MESSAGE % settings.timeout

        def _on_timeout(signum: int, frame: Any) -> None:
            if not getattr(settings, "disable_debugger_detection", False) and is_debugging():
                return  # a debugger is stopped in the item: no timeout, as pytest-timeout does
            raise ItemTimeout(message)

        def cancel() -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)

        item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout's cancel hook calls it
        signal.signal(signal.SIGALRM, _on_timeout)
        signal.setitimer(signal.ITIMER_REAL, settings.timeout)
        return True


def request_hook(item: pytest.Item) -> Callable[[ItemRequest], ItemRequest]:
    """The ``pytest_evalchemy_item_request`` hook as the callback ``run_item`` takes."""

    def adjust(request: ItemRequest) -> ItemRequest:
        # config.hook, not item.ihook: the item's path-scoped relay would skip a conftest
        # that does not lie above the config file (--evalchemy-config=/elsewhere/cfg.json).
        changed = item.config.hook.pytest_evalchemy_item_request(item=item, request=request)
        return request if changed is None else changed

    return adjust


def execute_item(
    planned: PlannedItem,
    settings: RunSettings,
    record: dict[str, Any],
    adjust: Callable[[ItemRequest], ItemRequest] | None = None,
    request: ItemRequest | None = None,
) -> None:
    """Run an item into ``record``, which says how it ended however it ends; re-raises (a
    config item and ``evalchemy.run()`` share this)."""
    try:
        run_item(planned, settings, record, adjust, request)
    except ItemFailed:
        raise
    except pytest.fail.Exception as exc:
        if "Timeout" in str(exc):
            record["status"] = Status.TIMEOUT
            record["message"] = f"timed out after {record['duration_s']:.1f}s ({exc})"
        else:
            record["status"] = Status.FAILED
            record["message"] = str(exc)
        raise
    except KeyboardInterrupt:
        record["status"] = Status.INTERRUPTED
        record["message"] = "interrupted"
        raise
    except Exception as exc:
        record["status"] = Status.ERROR
        # The cause in words; an HTTP error quotes the URL, credentials and all.
        record["message"] = scrub(
            describe_error(exc, settings.max_retries, settings.include_paths), settings.secrets
        )
        # Headed in the report's own words: a Python traceback in the output still means one
        # that nothing caught.
        cause = [
            CAUSE_HEAD if line == PYTHON_HEAD else scrub(line, settings.secrets)
            for line in traceback.format_exception(exc)
        ]
        log = settings.paths.item_dir(planned.benchmark, planned.task.key) / "lm_eval.log"
        with contextlib.suppress(OSError), log.open("a", encoding="utf-8") as out:
            # The log says why the item ended, not only what lm-eval logged before.
            out.write(f"evalchemy: lm-eval failed: {record['message']}\n{''.join(cause)}")
        raise ItemError(f"{planned.key}: lm-eval failed: {record['message']}", cause) from exc
