"""pytest glue: the hooks of a run, registered by the entry point (``glue/entry.py``) only when
an endpoint, a model to serve or a router is given. Options, state, collection nodes and the
reporter have their own modules; the work itself lives in the pytest-free ones."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from .core.config import load_config, plan_items
from .core.errors import ConfigError, EndpointError, EvalchemyError, UsageProblem
from .core.record import load_summary
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
from .glue.options import Options, resolve_options
from .glue.outputs import check_outputs
from .glue.reporter import EvalchemyReporter, XdistHooks
from .glue.selection import selected_keys
from .glue.state import RECORD_PROPERTY, STATE, EvalchemyState
from .run.chat_check import describe as describe_chat
from .run.chat_check import inspect_chat, refuse_unusable
from .run.chat_settings import generation_only, needs_server_template, reasoning_setting
from .run.endpoint import (
    EndpointInfo,
    check_endpoint,
    check_endpoints,
    is_chat_url,
    redact_url,
    unsent_credentials,
)
from .run.identity import differences, refusal
from .run.reasoning import DEFAULT_THINK_END
from .run.runlock import RunLock
from .run.tasks import catalog


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
        state.previous_summary = _previous_summary(state)
        state.previous = dict(state.previous_summary.get("tasks") or {})
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


def _previous_summary(state: EvalchemyState) -> dict[str, Any]:
    """The summary of the run being resumed."""
    path = state.paths.summary
    where = f"--evalchemy-resume {state.run_id}: "
    try:
        summary = load_summary(path, label=where, shown=str(path))
    except FileNotFoundError:
        raise pytest.UsageError(
            f"{where}no summary at {path}; check the run id and --evalchemy-output"
        ) from None
    except UsageProblem as exc:
        raise pytest.UsageError(str(exc)) from None
    state.started_at = summary.get("started_at") or state.started_at
    return summary


def _check_resume(state: EvalchemyState) -> None:
    """Refuse a resume that would complete another run than the one recorded (one line that
    names each difference), unless --evalchemy-resume-force; then the summary records it."""
    recorded = state.previous_summary.get("identity")
    if isinstance(recorded, dict):
        found = differences(recorded, state.identity())
    else:
        found = ["the run records no identity (written by an older pytest-evalchemy)"]
    if not found:
        return
    if not state.options.resume_force:
        raise pytest.UsageError(f"evalchemy: {refusal(state.run_id, found)}")
    assert state.resume_entry is not None
    known = state.resume_entry["differences"]
    known.extend(f for f in found if f not in known)


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


# ---------------------------------------------------------------- the endpoint check


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
    names = {n for item in selected for n in item.task.tasks}
    _check_tasks(state)
    # Every log handler (pytest's, lm-eval's, the plugin's) scrubs the run's credentials.
    redact_logging(secrets_of(options.endpoints, options.api_key))
    unsent = unsent_credentials(options.endpoints, options.api_key)
    if unsent:
        state.config_warnings.append(unsent)
    try:
        check_outputs(config, options, selected)
        check_writable(options.output)
        _hold_run_folder(config, state)
    except EvalchemyError as exc:
        # Before any request, and without the summary of errors below: it could not be
        # written, or it belongs to the run that holds the folder.
        raise pytest.UsageError(f"evalchemy: {exc}") from None
    try:
        if options.serve:
            urls = _start_servers(config, state)
            options = state.options = replace(options, endpoint=urls[0], endpoints=tuple(urls))
        check = {
            "model": options.model,
            "api_key": options.api_key,
            "local_tokenizer": options.tokenizer,
            "need_tokenizer": catalog.needs_tokenizer(
                names, state.eval_config.lm_eval_include_paths
            ),
            "verify": options.verify,
            "need_logprobs": chat_check_needs_logprobs(state, selected),
            "wait_s": options.wait_for_endpoint,
            "on_wait": _progress_line(config),
        }
        if not options.allow_mixed_models:
            # Before the check's probes: a replica the router would wait for in vain is named
            # with no completion sent (mixed models may need no router: _route asks then).
            _check_router_health(options)
        # Every replica is checked, with or without a router in front.
        infos = check_endpoints(
            options.endpoints, allow_mixed_models=options.allow_mixed_models, **check
        )
        infos = _route(config, state, infos, check)
        infos = check_chat(state, selected, infos)
    except EvalchemyError as exc:
        reporter: EvalchemyReporter | None = config.pluginmanager.get_plugin("evalchemy-reporter")
        if reporter is not None:
            reporter.fail_all(selected, f"endpoint check failed: {exc}")
        raise pytest.UsageError(f"evalchemy endpoint check failed: {exc}") from None
    state.endpoints = infos
    state.settings = state.make_settings(infos[0])
    if options.resume:
        _check_resume(state)  # the served model, its context length and the tokenizer
        _warn_forced_resume(config, state)


def _hold_run_folder(config: pytest.Config, state: EvalchemyState) -> None:
    """Lock the run folder for the run's whole life: a second run with the same id is
    refused at once and writes nothing. xdist workers run under the controller's lock."""
    lock = RunLock(state.paths.root, state.run_id)
    lock.acquire()
    state.lock = lock
    config.add_cleanup(lock.release)


def _warn_forced_resume(config: pytest.Config, state: EvalchemyState) -> None:
    entry = state.resume_entry
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if entry and entry["differences"] and terminal is not None:
        terminal.write_line(
            f"evalchemy: --evalchemy-resume-force: mixing two runs in {state.run_id} "
            f"({'; '.join(entry['differences'])})",
            yellow=True,
        )


def _check_tasks(state: EvalchemyState) -> None:
    """The config's task names, few-shot counts and limits, as ``--validate-config`` checks
    them (from the YAMLs and local data files: no request, no task code): errors stop the run
    before any traffic, warnings go to the summary and the terminal."""
    from .run.tasks.checks import check_task_data, check_task_names, unchecked_note

    names = check_task_names(state.eval_config)
    data = check_task_data(state.eval_config, state.options.limit)
    errors = [*names.errors, *data.errors]
    if errors:
        raise pytest.UsageError(str(ConfigError(errors)))
    state.config_warnings = list(data.warnings)
    state.config_notes = [unchecked_note(data.unchecked)] if data.unchecked else []


def _progress_line(config: pytest.Config) -> Any:
    """A callback that prints one line on the terminal (the endpoint check waiting)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")

    def say(line: str) -> None:
        if terminal is not None:
            terminal.write_line(f"evalchemy: {line}", yellow=True)

    return say


def chat_check_needs_logprobs(state: EvalchemyState, enabled: list[Any]) -> bool:
    """The completions check runs on completions URLs; behind a chat URL ``check_chat``
    looks for the completions endpoint first (a chat-only server has none)."""
    return not all(is_chat_url(u) for u in state.options.endpoints)


def check_chat(
    state: EvalchemyState, enabled: list[Any], infos: list[EndpointInfo]
) -> list[EndpointInfo]:
    """The chat part of the endpoint check (template, chat endpoint, reasoning) and the
    refusals it leads to."""
    options, paths = state.options, state.eval_config.lm_eval_include_paths
    generation = {item.key for item in enabled if generation_only(item.task, paths)}
    probe = any(
        reasoning_setting(item.task, options.chat) == "auto"
        for item in enabled
        if item.key in generation
    )
    checked = []
    for info in infos:
        info = inspect_chat(
            info,
            probe_chat=probe,
            api_key=options.api_key,
            verify=options.verify,
            think_end_token=options.chat.think_end_token or DEFAULT_THINK_END,
            loglikelihood=any(item.key not in generation for item in enabled),
        )
        # With a chat URL, generation items go to the chat endpoint and need no template here.
        on_completions = [
            item.task for item in enabled if info.chat_url is None or item.key not in generation
        ]
        refuse_unusable(
            info,
            template_keys=needs_server_template(
                on_completions,
                options.chat,
                chat_endpoint=info.chat_url is not None,
                local_tokenizer=options.tokenizer is not None,
            ),
            loglikelihood_keys=[item.key for item in enabled if item.key not in generation],
        )
        checked.append(info)
    return checked


def _start_servers(config: pytest.Config, state: EvalchemyState) -> list[str]:
    """Start the session's vLLM server, or its ``--evalchemy-replicas`` (replica i on the i-th
    device of ``--evalchemy-gpu``), for the whole run, also under xdist; they start side by
    side and are all stopped when pytest unconfigures, on failure and on Ctrl-C too."""
    from .run.router import split_devices
    from .run.serve import ServeError, ServeSpec, VllmServer

    o = state.options
    servers: list[VllmServer] = []
    for i, gpu in enumerate(split_devices(o.gpu, o.replicas)):
        name = "vllm_server.log" if o.replicas == 1 else f"vllm_server_{i}.log"
        spec = ServeSpec(
            model=o.serve or "",
            log_path=state.paths.root / name,
            python=o.vllm_python or sys.executable,
            gpu=gpu,
            extra_args=o.serve_args,
            startup_timeout=o.serve_timeout,
            cache_dir=config.rootpath / ".cache",
        )
        server = VllmServer(spec)
        config.add_cleanup(server.stop)
        servers.append(server)
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    try:
        for server in servers:
            if terminal is not None:
                terminal.write_line(
                    f"evalchemy: starting vLLM on {o.serve} (log: {server.spec.log_path})"
                )
            for warning in server.start():
                if terminal is not None:
                    terminal.write_line(f"evalchemy: {warning}", yellow=True)
        for server in servers:
            server.wait_ready()
    except ServeError as exc:
        for server in servers:
            server.stop()
        raise EndpointError(f"the vLLM server did not start: {exc}") from None
    return [server.completions_url for server in servers]


def _check_router_health(options: Options) -> None:
    """Every endpoint's ``/health``, when a ``vllm-router`` is to stand in front of them."""
    from .run import router

    if len(options.endpoints) > 1 and options.router is None and router.find_binary():
        router.check_health(options.endpoints, options.verify, options.wait_for_endpoint)


def _route(
    config: pytest.Config,
    state: EvalchemyState,
    infos: list[EndpointInfo],
    check: dict[str, Any],
) -> list[EndpointInfo]:
    """The endpoints items send to: a router in front of several replicas of one model (the
    user's ``--evalchemy-router``, or a ``vllm-router`` started here), else ``infos``."""
    from .run import router

    options = state.options
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    url = options.router
    if url is None:
        if len(infos) < 2 or len({i.model for i in infos}) > 1:
            # One endpoint, or --evalchemy-allow-mixed-models: a router would mix the models
            # within an item, so each item keeps to one endpoint.
            return infos
        binary = router.find_binary()
        if binary is None:
            if terminal is not None:
                terminal.write_line(
                    f"evalchemy: {router.BINARY} is not installed ({router.INSTALL_HINT}): "
                    f"each xdist worker keeps to one of the {len(infos)} endpoints instead of "
                    "every item using all of them",
                    yellow=True,
                )
            return infos
        router.check_replicas(infos, options.api_key, options.verify)
        if options.allow_mixed_models:
            _check_router_health(options)  # the models are the same after all
        started = router.Router(
            [i.url for i in infos], state.paths.root / "vllm_router.log", binary
        )
        config.add_cleanup(started.stop)
        try:
            started.start()
            started.wait_ready()
        except router.ServeError as exc:
            started.stop()
            raise EndpointError(f"{router.BINARY} did not start: {exc}") from None
        url = started.completions_url
        if terminal is not None:
            terminal.write_line(
                f"evalchemy: {router.BINARY} on {started.base_url} in front of "
                f"{len(infos)} replicas (log: {started.log_path})"
            )
    else:
        router.check_replicas(infos, options.api_key, options.verify)
    model = infos[0].model if infos else check["model"]
    routed = check_endpoint(url, **{**check, "model": model})
    state.replicas = [i.url for i in infos]
    state.router = routed.url
    return [routed]


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
    lines = [
        f"evalchemy: config {state.eval_config.path} ({sum(i.enabled for i in state.plan)} of {len(state.plan)} items enabled)"
    ]
    if state.settings:
        shown = state.replicas or [e.url for e in state.endpoints or [state.settings.endpoint]]
        urls = ", ".join(redact_url(u) for u in shown)
        if state.router:
            urls += f" through vllm-router {redact_url(state.router)}"
        word = "endpoints" if len(shown) > 1 else "endpoint"
        lines.append(
            f"evalchemy: {word} {urls}, model {state.settings.endpoint.model}, run {state.run_id}"
        )
        found = describe_chat(state.settings.endpoint)
        if found:
            lines.append(f"evalchemy: {found}")
    lines.extend(f"evalchemy: note: {note}" for note in state.config_notes)
    return lines


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
