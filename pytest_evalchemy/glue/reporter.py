"""The controller's reporter: results folder, score table and reports from the items'
reports, and the hand-over of the run to xdist workers."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ..core.config import PlannedItem
from ..core.record import FINISHED, UNFINISHED, Status
from ..core.results import (
    append_text,
    atomic_write_text,
)
from ..judge.baseline import presence_notes
from ..judge.gating import (
    unmatched_overrides,
)
from ..report.markdown import render_markdown
from ..report.run_page import write_report
from ..report.summary import RunRecorder, format_table, interval_legend, status_legend, table_rows
from ..run.chat_check import describe as describe_chat
from ..run.evaluation import (
    base_record,
    read_progress,
)
from ..run.tokenizer_check import CHAT_ENDPOINT_TOKENS
from ..run.tokenizer_check import describe as describe_tokenizer
from .state import API_RECORD_PROPERTY, RECORD_PROPERTY, EvalchemyState


class EvalchemyReporter:
    """Writes the results folder and prints the score table, from the reports of the items
    (sent by the workers under xdist)."""

    def __init__(self, config: pytest.Config, state: EvalchemyState) -> None:
        self.config = config
        self.state = state
        self.by_suffix = {f"::{p.benchmark}::{p.task.key}": p for p in state.plan}
        self._recorder: RunRecorder | None = None
        self.selected: dict[str, PlannedItem] = {}  # collected items, by key
        self.report_path: Path | None = None
        self._started: dict[str, float] = {}  # item key -> when it started (monotonic)
        # A mistyped TASK: prefix would gate nothing; say so before the run, not after.
        names = {n for p in state.plan for n in (p.benchmark, p.task.key, p.key, *p.task.tasks)}
        self.run_notes = unmatched_overrides(state.options.thresholds, names)
        for note in self.run_notes:
            config.issue_config_time_warning(pytest.PytestConfigWarning(note), stacklevel=2)

    @property
    def recorder(self) -> RunRecorder:
        if self._recorder is None:
            state = self.state
            self._recorder = RunRecorder(
                paths=state.paths,
                header=state.header(),
                order=[p.key for p in state.plan],
                started_at=state.started_at,
                amend=self._amend_summary,
            )
            # A resumed run's summary is completed in place.
            self._recorder.tasks.update(state.previous)
        return self._recorder

    def _amend_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """The summary after the plugins' pytest_evalchemy_summary and _update_summary."""
        hook = self.config.hook
        built = hook.pytest_evalchemy_summary(config=self.config, summary=summary)
        hook.pytest_evalchemy_update_summary(config=self.config, summary=built)
        return built

    def _planned(self, nodeid: str) -> PlannedItem | None:
        for suffix, planned in self.by_suffix.items():
            if nodeid.endswith(suffix):
                return planned
        return None

    def fail_all(self, items: list[PlannedItem], message: str) -> None:
        """Record every item as an error (the run cannot start) and write the summary; what a
        resumed run had finished stays as it was."""
        for planned in items:
            if self.recorder.tasks.get(planned.key, {}).get("status") in FINISHED:
                continue
            record = base_record(planned, None)
            record["status"] = Status.ERROR
            record["message"] = message
            self.recorder.tasks[planned.key] = record
        self.recorder.log(message)
        self.recorder.finish(int(pytest.ExitCode.USAGE_ERROR), interrupted=False)
        self._write_report()

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        planned = self._planned(nodeid)
        if planned is not None and planned.enabled and self.state.settings is not None:
            record = base_record(planned, self.state.settings)
            record["status"] = Status.RUNNING
            self._started[planned.key] = time.monotonic()
            previous = self.recorder.tasks.get(planned.key)
            if previous is None or previous.get("status") not in FINISHED:
                self.recorder.tasks[planned.key] = record
                # On disk at once: a run killed now still shows what it was doing.
                self.recorder.write_summary()

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        planned = self._planned(report.nodeid)
        if planned is None:
            self._api_records(report)
            return
        props = dict(report.user_properties)
        record = (
            json.loads(props[RECORD_PROPERTY])
            if RECORD_PROPERTY in props
            else base_record(planned, self.state.settings)
        )
        if report.when == "setup" and report.skipped:
            record["status"] = Status.SKIPPED
            longrepr = report.longrepr
            record["message"] = (
                longrepr[2].removeprefix("Skipped: ")
                if isinstance(longrepr, tuple)
                else planned.reason
            )
        elif report.when == "call":
            if record["status"] in UNFINISHED:
                # pytest's outcome of an item that never ran its body.
                record["status"] = {
                    "passed": Status.PASSED,
                    "failed": Status.ERROR,
                    "skipped": Status.SKIPPED,
                }[report.outcome]
            if not (record.get("resumed") and record["status"] in FINISHED):
                # A finished item kept by a resumed run keeps the time it took when it ran.
                record["duration_s"] = round(report.duration, 3)
        elif report.failed:
            crashed = report.when not in (
                "setup",
                "teardown",
            )  # xdist reports a crashed worker as "???"
            record["status"] = Status.CRASHED if crashed else Status.ERROR
            record["message"] = (report.longreprtext.strip().splitlines() or [""])[-1]
        else:
            return
        self.recorder.update(planned.key, record, report.longreprtext if report.failed else "")

    def _close_unfinished(self) -> None:
        """Items still running when the run ends (Ctrl-C, SIGTERM) never sent a report: their
        record says how long they ran and what they sent (the item's progress file, written
        by the process that ran it), else how long since they started."""
        for key, record in self.recorder.tasks.items():
            if record["status"] not in UNFINISHED:
                continue
            done = read_progress(self.state.paths.item_dir(record["benchmark"], record["task"]))
            record.update({k: done[k] for k in ("duration_s", "requests") if done.get(k)})
            if key in self._started and not record.get("duration_s"):
                record["duration_s"] = round(time.monotonic() - self._started[key], 3)

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected(item.nodeid for item in session.items)

    def collected(self, nodeids: Iterable[str]) -> None:
        """The items this run selected (from the workers' collection under xdist)."""
        for nodeid in nodeids:
            planned = self._planned(nodeid)
            if planned is not None:
                self.selected[planned.key] = planned

    def _not_started(self) -> None:
        """Entries for the selected items that never started, so that a run that ended early
        says what is left: ``pending``, or ``skipped`` for the disabled ones."""
        tasks = self.recorder.tasks
        for key, planned in self.selected.items():
            if key in tasks:
                continue
            record = base_record(planned, self.state.settings)
            record["status"] = Status.PENDING if planned.enabled else Status.SKIPPED
            record["message"] = "not started" if planned.enabled else planned.reason
            tasks[key] = record

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self._recorder is not None:
            # From here on the run's record is final: a Ctrl-C must not change its outcome.
            _ignore_late_interrupts(self.config)
            self._close_unfinished()
            self._not_started()
            self._recorder.header = self.state.header()
            self._recorder.gate_notes = self._gate_notes()
            self._recorder.finish(
                int(exitstatus), interrupted=int(exitstatus) == int(pytest.ExitCode.INTERRUPTED)
            )
            self._write_markdown()
            self._write_report()

    def _api_records(self, report: pytest.TestReport) -> None:
        """The records of a test's ``evalchemy.run()`` calls (a test, not a config item)."""
        # The call report carries what setup and call ran; a failed setup has no call report.
        if report.when != "call" and not (report.when == "setup" and report.failed):
            return
        for name, value in report.user_properties:
            if name != API_RECORD_PROPERTY:
                continue
            data = json.loads(value)
            record = data["record"]
            if report.failed and record["status"] == Status.PASSED:
                # The run passed its own checks, the test's assertion did not: the entry says so.
                crash = getattr(report.longrepr, "reprcrash", None)
                reason = getattr(crash, "message", None) or report.longreprtext.strip()
                record["status"] = Status.FAILED
                record["message"] = f"the test failed: {(reason.splitlines() or [''])[0]}"
            self.recorder.update(data["key"], record, report.longreprtext if report.failed else "")

    def _write_report(self) -> None:
        recorder = self._recorder
        if recorder is None or not recorder.written or self.state.options.no_report:
            return
        try:
            self.report_path = write_report(recorder.written_summary(), recorder.paths.root)
        except Exception as exc:
            # The run's verdict stands; a report that cannot be made must not change it (a
            # plugin's summary hook may also have built a summary the report cannot read).
            recorder.log(f"cannot write the HTML report: {type(exc).__name__}: {exc}")

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        recorder = self._recorder
        if recorder is None or not recorder.tasks:
            return
        ordered = recorder.summary()["tasks"]
        metrics = {p.key: p.task.metrics for p in self.state.plan}
        terminalreporter.write_sep("=", "evalchemy scores")
        for line in format_table(table_rows(ordered, metrics)):
            terminalreporter.write_line(line)
        for legend in (interval_legend(ordered), status_legend(ordered)):
            if legend:
                terminalreporter.write_line(legend)
        gate = recorder.summary().get("gate", {})
        if gate.get("mode") == "ci" or gate.get("baseline"):
            line = f"gate: {gate['mode']} at {gate['confidence']:g} confidence"
            if gate.get("baseline"):
                line += f"; baseline {gate['baseline']} (max drop {gate['max_drop']:g})"
            terminalreporter.write_line(line)
        for note in gate.get("notes", ()):
            terminalreporter.write_line(f"note: {note}", yellow=True)
        for warning in self.state.config_warnings:
            terminalreporter.write_line(f"warning: {warning}", yellow=True)
        for key, record in ordered.items():
            context = record.get("context") or {}
            if context.get("message"):
                terminalreporter.write_line(f"context: {key}: {context['message']}", yellow=True)
        if recorder.written:
            terminalreporter.write_line(f"summary: {recorder.paths.summary}")
        if self.report_path is not None:
            terminalreporter.write_line(f"report: {self.report_path}")
        if self.state.options.markdown and self.state.options.markdown.exists():
            terminalreporter.write_line(f"markdown: {self.state.options.markdown}")

    def _gate_notes(self) -> list[str]:
        """Everything a reader of the gate should know: the items' notes (not like for like),
        the items only one of the runs scored, mistyped command-line thresholds."""
        tasks = self.recorder.tasks
        notes = [*self.run_notes]
        for key in self.recorder.summary()["tasks"]:
            notes.extend(tasks[key].get("gate_notes", ()))
        baseline = self.state.options.gate.baseline
        if baseline is not None:
            notes.extend(presence_notes(baseline, tasks))
        return notes

    def _write_markdown(self) -> None:
        path = self.state.options.markdown
        if path is None or self._recorder is None:
            return
        text = render_markdown(self._recorder.written_summary())
        writes = [(path, atomic_write_text)]
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            # GitHub collects every step's summary from this one file: add, never replace.
            writes.append((Path(os.environ["GITHUB_STEP_SUMMARY"]), append_text))
        for target, write in writes:
            try:
                write(target, text)
            except OSError as exc:
                # The run's verdict stands; a report that cannot be written must not change it.
                self._recorder.log(f"cannot write the Markdown summary to {target}: {exc}")


def _ignore_late_interrupts(config: pytest.Config) -> None:
    """Once the final summary is being written, a first SIGINT says so in a line and changes
    nothing: the exit status stays the run's (it would otherwise end in a traceback and exit
    130 while the summary says 0). A second one interrupts as usual, for a teardown that hangs.
    The previous handler is back when pytest unconfigures."""
    if threading.current_thread() is not threading.main_thread():
        return  # Python sets signal handlers from the main thread only
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:
        return  # not set from Python (cannot be restored), or interrupts are ignored anyway

    def late(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, previous)
        sys.stderr.write(
            "\nevalchemy: interrupt ignored: the run is over and its summary written "
            "(Ctrl-C again to stop at once)\n"
        )

    signal.signal(signal.SIGINT, late)
    config.add_cleanup(lambda: signal.signal(signal.SIGINT, previous))


class XdistHooks:
    """Hands the controller's run id and endpoint check to the workers, and tells the reporter
    what they collected."""

    def __init__(self, state: EvalchemyState, reporter: EvalchemyReporter) -> None:
        self.state = state
        self.reporter = reporter

    @pytest.hookimpl
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.reporter.collected(ids)

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        state = self.state
        node.workerinput["evalchemy"] = {
            "run_id": state.run_id,
            "started_at": state.started_at,
            "endpoints": [e.to_dict() for e in state.endpoints],
        }


def header_lines(state: EvalchemyState) -> list[str]:
    """The run's lines in pytest's header: the config, the endpoints (redacted), what the
    endpoint check found, and the notes of the task check."""
    enabled = sum(i.enabled for i in state.plan)
    lines = [
        f"evalchemy: config {state.eval_config.path} ({enabled} of {len(state.plan)} items enabled)"
    ]
    if state.settings:
        shown = state.shown_endpoints()
        urls = ", ".join(shown)
        if state.router:
            urls += f" through vllm-router {state.router.redacted}"
        word = "endpoints" if len(shown) > 1 else "endpoint"
        lines.append(
            f"evalchemy: {word} {urls}, model {state.settings.endpoint.model}, run {state.run_id}"
        )
        found = describe_chat(state.settings.endpoint)
        if found:
            lines.append(f"evalchemy: {found}")
        facts = state.settings.endpoint.tokenizer
        if facts is not None:
            setting = state.options.add_bos_token or "auto"
            lines.append(f"evalchemy: {describe_tokenizer(facts, setting)}")
        if state.settings.endpoint.chat_url is not None:
            lines.append(f"evalchemy: {CHAT_ENDPOINT_TOKENS}")
    lines.extend(f"evalchemy: note: {note}" for note in state.config_notes)
    return lines
