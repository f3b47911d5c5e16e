"""pytest glue: the hooks of a run, registered by the entry point (``glue/entry.py``) only when
an endpoint, a model to serve or a router is given. Options, state, collection nodes and the
reporter have their own modules; the work itself lives in the pytest-free ones."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .core.config import load_config, plan_items
from .core.errors import ConfigError, EvalchemyError, UsageProblem
from .core.redact import redact_logging, secrets_of
from .core.requirements import lm_eval_problem
from .core.resources import missing_module
from .core.results import (
    check_writable,
    default_run_id,
    now_iso,
)
from .glue.api import Evalchemy
from .glue.items import EvalConfigFile, TaskItem, TimeoutHooks, execute_item, request_hook
from .glue.options import resolve_options
from .glue.outputs import check_outputs
from .glue.reporter import EvalchemyReporter, XdistHooks, header_lines
from .glue.selection import selected_keys
from .glue.state import RECORD_PROPERTY, STATE, EvalchemyState
from .run.endpoint import EndpointInfo, unsent_credentials
from .run.session import EndpointSetup, check_tasks


@pytest.hookimpl(trylast=True)
def pytest_evalchemy_summary(config: pytest.Config, summary: dict[str, Any]) -> dict[str, Any]:
    """The plugin's summary as it is; an implementation of a user's runs before this one."""
    return summary


def make_evalchemy(request: pytest.FixtureRequest) -> Evalchemy:
    """The ``evalchemy`` fixture's value (the fixture itself is the entry point's)."""
    state = request.config.stash[STATE]
    return Evalchemy(request.node, state, execute_item, request_hook(request.node))


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Registered by the entry point (glue/entry.py) only when a run is asked for.
    problem = lm_eval_problem()
    if problem:
        # Before anything else: an lm-eval outside the range fails later without naming it.
        raise pytest.UsageError(problem)
    options = resolve_options(config)
    if options.tokenizer and missing_module("transformers"):
        # Before any request: otherwise every item fails with a ModuleNotFoundError.
        raise pytest.UsageError(
            f"--evalchemy-tokenizer {options.tokenizer}: a local tokenizer needs transformers, "
            "which is not installed: pip install 'pytest-evalchemy[hf]' (or leave the option "
            "out to use the server's /tokenize)"
        )
    try:
        eval_config = load_config(options.config_path)
    except EvalchemyError as exc:
        raise pytest.UsageError(str(exc)) from None
    worker_data = config.workerinput.get("evalchemy", {}) if _is_worker(config) else {}
    state = EvalchemyState(
        options=options,
        eval_config=eval_config,
        plan=plan_items(eval_config),
        run_id=worker_data.get("run_id") or options.run_id or default_run_id(),
        started_at=worker_data.get("started_at") or now_iso(),
        is_worker=_is_worker(config),
    )
    if worker_data.get("endpoints"):
        state.endpoints = [EndpointInfo.from_dict(d) for d in worker_data["endpoints"]]
        state.settings = state.make_settings(state.endpoints[0])
        state.worker_index = int(config.workerinput.get("workerid", "gw0").removeprefix("gw") or 0)
    if options.resume:
        try:
            state.load_previous()
        except UsageProblem as exc:
            raise pytest.UsageError(str(exc)) from None
        if not state.is_worker:
            state.resume_entry = {
                "at": now_iso(),
                "forced": options.resume_force,
                "differences": [],
            }
            # What is known before any request; the endpoint's side after its check.
            _check_resume(state)
    config.stash[STATE] = state
    _collect_config_file(config, options.config_path)
    _interrupt_on_sigterm(config)
    if config.pluginmanager.hasplugin("timeout"):
        config.pluginmanager.register(TimeoutHooks(), "evalchemy-timeout")
    if options.insecure:
        # urllib3 would warn on every request; one warning of ours says it once.
        config.addinivalue_line(
            "filterwarnings", "ignore::urllib3.exceptions.InsecureRequestWarning"
        )
        if not _is_worker(config):
            config.issue_config_time_warning(
                pytest.PytestConfigWarning(
                    "evalchemy: --evalchemy-insecure: the endpoint's TLS certificate is not "
                    "verified; anyone on the path can read the prompts and the API key. Prefer "
                    "--evalchemy-ca-bundle PATH"
                ),
                stacklevel=2,
            )
    if not state.is_worker:
        reporter = EvalchemyReporter(config, state)
        config.pluginmanager.register(reporter, "evalchemy-reporter")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(XdistHooks(state, reporter), "evalchemy-xdist")


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """End the run on SIGTERM (a cancelled CI job, ``kill``, a stopping container) the way
    Ctrl-C does: exit status 2, the running item ``interrupted``, the summary written. pytest
    turns only SIGINT into KeyboardInterrupt; SIGTERM would otherwise kill the process with
    the item still ``running``. The previous handler is back when pytest unconfigures."""
    if threading.current_thread() is not threading.main_thread():
        return  # Python sets signal handlers from the main thread only

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")

    previous = signal.signal(signal.SIGTERM, interrupt)
    if previous is not None:  # None: a handler not set from Python, which cannot be restored
        config.add_cleanup(lambda: signal.signal(signal.SIGTERM, previous))


def _collect_config_file(config: pytest.Config, config_path: Path) -> None:
    """Make pytest collect the config file, wherever it lives."""
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # No paths given: the config takes the place of testpaths.
        config.args = [str(config_path)]
        return
    for arg in config.args:
        given = (config.invocation_params.dir / arg.split("::")[0]).absolute()
        if given == config_path or given in config_path.parents:
            return  # pytest reaches the config file through this argument already
    config.args = [*config.args, str(config_path)]


# ---------------------------------------------------------------- the session's set-up


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    state = config.stash.get(STATE, None)
    # One check per run, on the controller, before xdist starts its workers.
    if state is None or state.is_worker or config.option.collectonly:
        return
    options = state.options
    state.selected = selected_keys(config, state.plan, options.config_path, options.timeout)
    # Only what -k and -m keep decides what the endpoint must offer, or is failed below.
    selected = [item for item in state.plan if item.key in state.selected]
    try:
        found = check_tasks(state.eval_config, options.limit)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    state.config_warnings, state.config_notes = found.warnings, found.notes
    # Every log handler (pytest's, lm-eval's, the plugin's) scrubs the run's credentials.
    redact_logging(secrets_of([e.url for e in options.endpoints], options.api_key))
    unsent = unsent_credentials(options.endpoints)
    if unsent:
        state.config_warnings.append(unsent)
    try:
        check_outputs(config, options, selected)
        check_writable(options.output)
        state.hold_run_folder(config.add_cleanup)
    except EvalchemyError as exc:
        # Before any request, and without the summary of errors below: it could not be
        # written, or it belongs to the run that holds the folder.
        raise pytest.UsageError(f"evalchemy: {exc}") from None
    setup = EndpointSetup(
        selected=selected,
        include_paths=state.eval_config.lm_eval_include_paths,
        run_root=state.paths.root,
        cache_dir=config.rootpath / ".cache",
        say=_terminal_line(config),
        add_cleanup=config.add_cleanup,
    )
    try:
        setup.run(options)
    except EvalchemyError as exc:
        state.options = setup.served(options)
        reporter: EvalchemyReporter | None = config.pluginmanager.get_plugin("evalchemy-reporter")
        if reporter is not None:
            reporter.fail_all(selected, f"endpoint check failed: {exc}")
        raise pytest.UsageError(f"evalchemy endpoint check failed: {exc}") from None
    state.options = setup.served(options)
    state.endpoints, state.replicas, state.router = setup.infos, setup.replicas, setup.router
    state.settings = state.make_settings(setup.infos[0])
    if options.resume:
        _check_resume(state)  # the served model, its context length and the tokenizer
        _warn_forced_resume(config, state)


def _check_resume(state: EvalchemyState) -> None:
    try:
        state.check_resume()
    except UsageProblem as exc:
        raise pytest.UsageError(str(exc)) from None


def _warn_forced_resume(config: pytest.Config, state: EvalchemyState) -> None:
    entry = state.resume_entry
    if entry and entry["differences"]:
        _terminal_line(config)(
            f"--evalchemy-resume-force: mixing two runs in {state.run_id} "
            f"({'; '.join(entry['differences'])})",
            True,
        )


def _terminal_line(config: pytest.Config) -> Callable[[str, bool], None]:
    """A callback that prints one ``evalchemy:`` line on the terminal, yellow when it warns."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str, warn: bool) -> None:
        if terminal is not None:
            terminal.write_line(f"evalchemy: {line}", **({"yellow": True} if warn else {}))

    return say


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, tuple[str, dict[str, bool]]] | None:
    """``-v`` shows how many requests an item sent and how fast, beside its outcome."""
    if report.when != "call" or config.stash.get(STATE, None) is None:
        return None
    props = dict(report.user_properties)
    if RECORD_PROPERTY not in props:
        return None
    requests = json.loads(props[RECORD_PROPERTY]).get("requests") or {}
    if not requests.get("done"):
        return None
    word = report.outcome.upper()
    settled = requests.get("concurrency")
    at = f", concurrency {settled}" if settled else ""
    detail = f"{word} ({requests['done']} requests, {requests['per_s']:.1f}/s{at})"
    letter = {"passed": ".", "failed": "F", "skipped": "s"}[report.outcome]
    return report.outcome, letter, (detail, {"green": report.passed, "red": report.failed})


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE, None)
    if state is None:
        return None
    return header_lines(state)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if isinstance(item, TaskItem) and report.failed:
        # lm-eval's output (INFO records, progress bars) is in the item's lm_eval.log; the
        # report keeps the plugin's message and the log's last warnings (repr_failure).
        report.sections = [s for s in report.sections if not s[0].startswith("Captured ")]
    return report


# ---------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(STATE, None)
    if state is None or file_path.absolute() != state.options.config_path:
        return None
    rootpath = parent.config.rootpath
    if rootpath in file_path.absolute().parents:
        return EvalConfigFile.from_parent(parent, path=file_path)
    # Outside the rootdir pytest would give the file an empty node id; spell out the path.
    nodeid = os.path.relpath(file_path.absolute(), rootpath).replace(os.sep, "/")
    return EvalConfigFile.from_parent(parent, path=file_path, nodeid=nodeid)
