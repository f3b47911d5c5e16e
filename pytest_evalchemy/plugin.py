"""pytest glue: options, collection of the config's tasks as test items, the endpoint check,
and the controller-side reporter. The work itself lives in the pytest-free modules."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from . import catalog
from .api import API_RECORD_PROPERTY, Evalchemy
from .baseline import load_baseline, presence_notes
from .config import EvalConfig, PlannedItem, Threshold, load_config, normalize_metric, plan_items
from .endpoint import (
    DEFAULT_MAX_LENGTH,
    EndpointInfo,
    check_endpoints,
    pick_endpoint,
    redact_url,
    split_endpoints,
)
from .errors import ConfigError, EndpointError, EvalchemyError
from .evaluation import (
    ItemFailed,
    RunSettings,
    base_record,
    describe_error,
    item_timeout,
    run_item,
)
from .gating import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_DROP,
    GATE_MODES,
    GateSettings,
    check_properties,
    unmatched_overrides,
)
from .harness import HarnessRequest, scrub
from .html_report import write_report
from .markdown_report import render_markdown
from .results import (
    DEFAULT_CONFIG,
    DEFAULT_OUTPUT,
    RunPaths,
    append_text,
    atomic_write_text,
    check_writable,
    default_run_id,
    now_iso,
    validate_run_id,
)
from .summary import RunRecorder, format_table, table_rows

RECORD_PROPERTY = "evalchemy"
FINISHED = ("passed", "failed")  # statuses a resumed run keeps


# ---------------------------------------------------------------- options

# (option, ini/env suffix, help, type). Every option has an ini twin `evalchemy_<suffix>`.
_OPTIONS: list[tuple[str, str, str, Any]] = [
    (
        "--evalchemy-endpoint",
        "endpoint",
        "Completions URL of the vLLM server, e.g. http://host:8000/v1/completions. Env: EVALCHEMY_ENDPOINT",
        str,
    ),
    (
        "--evalchemy-config",
        "config",
        f"Evaluation config (JSON, or YAML by extension). Default: {DEFAULT_CONFIG}. Env: EVALCHEMY_CONFIG",
        str,
    ),
    (
        "--evalchemy-model",
        "model",
        "Model name sent to the server. Default: the first id GET /v1/models lists",
        str,
    ),
    (
        "--evalchemy-run-id",
        "run_id",
        "Run id naming the results folder. Default: YYYYMMDD_HHMMSS_PID. Env: EVALCHEMY_RUN_ID",
        str,
    ),
    (
        "--evalchemy-output",
        "output",
        f"Results root folder. Default: {DEFAULT_OUTPUT}. Env: EVALCHEMY_OUTPUT",
        str,
    ),
    (
        "--evalchemy-batch-size",
        "batch_size",
        "Requests per batch for every task (overrides the config)",
        int,
    ),
    (
        "--evalchemy-max-length",
        "max_length",
        "Maximum sequence length. Default: max_model_len from /v1/models, else 2048",
        int,
    ),
    (
        "--evalchemy-concurrency",
        "concurrency",
        "Concurrent requests per item (lm-eval num_concurrent). Default: 1",
        int,
    ),
    (
        "--evalchemy-tokenizer",
        "tokenizer",
        "Local tokenizer folder or name (needs transformers). Default: the server's /tokenize endpoints",
        str,
    ),
    (
        "--evalchemy-limit",
        "limit",
        "Samples per task for every task (overrides the config), e.g. 10 for a quick run",
        float,
    ),
    (
        "--evalchemy-timeout",
        "timeout",
        "Default per-item timeout in seconds for tasks without 'timeout'",
        float,
    ),
    (
        "--evalchemy-max-retries",
        "max_retries",
        "Attempts per request before an item errors. Default: 3",
        int,
    ),
    (
        "--evalchemy-ca-bundle",
        "ca_bundle",
        "CA bundle (PEM) that signed an https endpoint's certificate. Default: the system's, or REQUESTS_CA_BUNDLE",
        str,
    ),
    (
        "--evalchemy-serve",
        "serve",
        "Start a vLLM server on this model (folder or hub id) for the session and evaluate it",
        str,
    ),
    (
        "--evalchemy-gpu",
        "gpu",
        "CUDA_VISIBLE_DEVICES for the server --evalchemy-serve starts (Linux only)",
        str,
    ),
    (
        "--evalchemy-vllm-python",
        "vllm_python",
        "Python of the environment that has vLLM, for --evalchemy-serve. Env: EVALCHEMY_VLLM_PYTHON. Default: this Python",
        str,
    ),
    (
        "--evalchemy-serve-timeout",
        "serve_timeout",
        "Seconds to wait for the server --evalchemy-serve starts. Default: 600",
        float,
    ),
    (
        "--evalchemy-log-level",
        "log_level",
        "Level of lm-eval's log written to the results folder. Default: INFO",
        str,
    ),
    (
        "--evalchemy-gate",
        "gate",
        "How checks are judged: point (the value) or ci (fail only when the whole confidence interval misses). Default: point. Env: EVALCHEMY_GATE",
        str,
    ),
    (
        "--evalchemy-confidence",
        "confidence",
        f"Confidence of the intervals and drop tests of --evalchemy-gate=ci. Default: {DEFAULT_CONFIDENCE}",
        float,
    ),
    (
        "--evalchemy-baseline",
        "baseline",
        "A previous run's summary JSON, or its run folder: fail items whose metrics dropped. Env: EVALCHEMY_BASELINE",
        str,
    ),
    (
        "--evalchemy-max-drop",
        "max_drop",
        f"Largest allowed drop (absolute) against --evalchemy-baseline; a task's 'max_drop' overrides it per metric. Default: {DEFAULT_MAX_DROP}",
        float,
    ),
    (
        "--evalchemy-markdown",
        "markdown",
        "Write a Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when set). Env: EVALCHEMY_MARKDOWN",
        str,
    ),
]
_ENV = {
    "endpoint": "EVALCHEMY_ENDPOINT",
    "config": "EVALCHEMY_CONFIG",
    "run_id": "EVALCHEMY_RUN_ID",
    "output": "EVALCHEMY_OUTPUT",
    "gate": "EVALCHEMY_GATE",
    "baseline": "EVALCHEMY_BASELINE",
    "markdown": "EVALCHEMY_MARKDOWN",
    "vllm_python": "EVALCHEMY_VLLM_PYTHON",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("evalchemy", "LLM benchmarks with lm-evaluation-harness")
    for flag, name, help_text, _type in _OPTIONS:
        # Several endpoints: repeat the option (or separate them with commas).
        action = "append" if name == "endpoint" else "store"
        group.addoption(flag, dest=f"evalchemy_{name}", default=None, action=action, help=help_text)
        parser.addini(f"evalchemy_{name}", help_text, default=None)
    group.addoption(
        "--evalchemy-allow-mixed-models",
        action="store_true",
        default=False,
        help="Accept endpoints that serve different models",
    )
    group.addoption(
        "--evalchemy-no-cache",
        action="store_true",
        default=False,
        help="Do not keep lm-eval's response cache under <output>/.cache (no resume)",
    )
    group.addoption(
        "--evalchemy-no-report",
        action="store_true",
        default=False,
        help="Do not write the HTML report <output>/<run_id>/report.html",
    )
    group.addoption(
        "--evalchemy-insecure",
        action="store_true",
        default=False,
        help="Do not verify an https endpoint's certificate (warns; prefer --evalchemy-ca-bundle)",
    )
    group.addoption(
        "--evalchemy-allow-unsafe-code",
        action="store_true",
        default=False,
        help="Run tasks whose YAML says `unsafe_code: true` (lm-eval's confirm_run_unsafe_code)",
    )
    group.addoption(
        "--evalchemy-resume",
        metavar="RUN_ID",
        default=None,
        help="Complete the run RUN_ID in place: finished items keep their results, the others "
        "continue from their cached responses",
    )
    group.addoption(
        "--evalchemy-serve-arg",
        dest="evalchemy_serve_arg",
        action="append",
        default=[],
        help="Extra argument for the server --evalchemy-serve starts (repeatable), e.g. --evalchemy-serve-arg=--dtype=bfloat16",
    )
    group.addoption(
        "--evalchemy-threshold",
        dest="evalchemy_threshold",
        action="append",
        default=[],
        help="Threshold TASK:METRIC>=VALUE or <=VALUE (repeatable; overrides the config), e.g. 'mini_arc:acc>=0.6'",
    )


@dataclass(frozen=True)
class Options:
    """The plugin's settings, resolved command line > environment > ini > default."""

    endpoint: str | None
    config_path: Path
    model: str | None
    run_id: str | None
    output: Path
    batch_size: int | None
    max_length: int | None
    concurrency: int
    tokenizer: str | None
    limit: int | float | None
    timeout: float | None
    max_retries: int
    log_level: str
    thresholds: tuple[Threshold, ...]
    endpoints: tuple[str, ...] = ()
    allow_mixed_models: bool = False
    no_cache: bool = False
    resume: str | None = None
    serve: str | None = None
    gpu: str | None = None
    serve_args: tuple[str, ...] = ()
    vllm_python: str | None = None
    serve_timeout: float = 600.0
    api_key: str | None = field(default=None, repr=False)
    gate: GateSettings = field(default_factory=GateSettings)
    markdown: Path | None = None
    ca_bundle: Path | None = None
    insecure: bool = False
    allow_unsafe_code: bool = False

    @property
    def verify(self) -> bool | str:
        """requests' and lm-eval's TLS setting: True, False, or the CA bundle's path."""
        if self.insecure:
            return False
        return str(self.ca_bundle) if self.ca_bundle else True


def _raw(config: pytest.Config, name: str) -> tuple[str | None, Path]:
    """A setting's value and the folder a relative path in it is relative to."""
    value = config.getoption(f"evalchemy_{name}")
    if isinstance(value, list):
        value = ",".join(value)
    if value is not None:
        return str(value), config.invocation_params.dir
    env = _ENV.get(name)
    if env and os.environ.get(env):
        return os.environ[env], config.invocation_params.dir
    value = config.getini(f"evalchemy_{name}")
    if value:
        base = config.inipath.parent if config.inipath else config.rootpath
        return str(value), base
    return None, config.invocation_params.dir


def _number(config: pytest.Config, name: str, kind: type, minimum: float) -> Any:
    value, _ = _raw(config, name)
    if value is None:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise pytest.UsageError(
            f"--evalchemy-{name.replace('_', '-')}: expected a number, got {value!r}"
        ) from None
    if number < minimum:
        raise pytest.UsageError(
            f"--evalchemy-{name.replace('_', '-')}: must be at least {minimum}, got {value!r}"
        )
    return number


def parse_threshold(text: str) -> Threshold:
    """``TASK:METRIC>=VALUE`` (or ``<=``) from the command line."""
    for op in (">=", "<="):
        if op in text:
            metric, _, value = text.partition(op)
            try:
                number = float(value)
            except ValueError:
                break
            if not metric.strip():
                break
            metric = normalize_metric(metric.strip())
            return Threshold(metric, min=number) if op == ">=" else Threshold(metric, max=number)
    raise pytest.UsageError(
        f"--evalchemy-threshold {text!r}: expected TASK:METRIC>=VALUE or METRIC<=VALUE, e.g. 'mini_arc:acc>=0.6'"
    )


def _gate_settings(config: pytest.Config) -> GateSettings:
    """--evalchemy-gate, -confidence, -max-drop and -baseline (loaded here: under xdist each
    worker reads the baseline itself)."""
    mode = (_raw(config, "gate")[0] or "point").lower()
    if mode not in GATE_MODES:
        raise pytest.UsageError(
            f"--evalchemy-gate: expected {' or '.join(GATE_MODES)}, got {mode!r}"
        )
    confidence = _number(config, "confidence", float, 0)
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
    if not 0 < confidence < 1:
        raise pytest.UsageError(
            f"--evalchemy-confidence: expected a number between 0 and 1, e.g. 0.95, got {confidence!r}"
        )
    max_drop = _number(config, "max_drop", float, 0)
    baseline_value, baseline_base = _raw(config, "baseline")
    try:
        baseline = load_baseline(baseline_base / baseline_value) if baseline_value else None
    except EvalchemyError as exc:
        raise pytest.UsageError(str(exc)) from None
    return GateSettings(
        mode=mode,
        confidence=confidence,
        max_drop=DEFAULT_MAX_DROP if max_drop is None else max_drop,
        baseline=baseline,
    )


def resolve_options(config: pytest.Config) -> Options:
    endpoint, _ = _raw(config, "endpoint")
    config_value, config_base = _raw(config, "config")
    config_path = config_base / (config_value or DEFAULT_CONFIG)
    if config_value is None and not config_path.exists():
        config_path = config.rootpath / DEFAULT_CONFIG
    output_value, output_base = _raw(config, "output")
    limit = _number(config, "limit", float, 0)
    if limit is not None and limit >= 1:
        limit = int(limit)
    log_level = (_raw(config, "log_level")[0] or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise pytest.UsageError(
            f"--evalchemy-log-level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}"
        )
    run_id = _raw(config, "run_id")[0]
    resume = config.getoption("evalchemy_resume")
    if resume is not None:
        if run_id is not None and run_id != resume:
            raise pytest.UsageError(
                f"--evalchemy-resume {resume!r} and --evalchemy-run-id {run_id!r} disagree: give one"
            )
        run_id = resume
    if run_id is not None:
        try:
            validate_run_id(run_id)
        except EvalchemyError as exc:
            raise pytest.UsageError(f"--evalchemy-run-id: {exc}") from None
    return Options(
        endpoint=endpoint,
        config_path=config_path.absolute(),
        model=_raw(config, "model")[0],
        run_id=run_id,
        output=(output_base / (output_value or DEFAULT_OUTPUT)).absolute(),
        batch_size=_number(config, "batch_size", int, 1),
        max_length=_number(config, "max_length", int, 16),
        concurrency=_number(config, "concurrency", int, 1) or 1,
        tokenizer=_raw(config, "tokenizer")[0],
        limit=limit,
        timeout=_number(config, "timeout", float, 0.001),
        max_retries=_number(config, "max_retries", int, 1) or 3,
        log_level=log_level,
        thresholds=tuple(parse_threshold(t) for t in config.getoption("evalchemy_threshold")),
        allow_mixed_models=bool(config.getoption("evalchemy_allow_mixed_models")),
        no_cache=bool(config.getoption("evalchemy_no_cache")),
        resume=resume,
        serve=_raw(config, "serve")[0],
        gpu=_raw(config, "gpu")[0],
        serve_args=tuple(config.getoption("evalchemy_serve_arg")),
        vllm_python=_raw(config, "vllm_python")[0],
        serve_timeout=_number(config, "serve_timeout", float, 1) or 600.0,
        api_key=os.environ.get("EVALCHEMY_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
        gate=_gate_settings(config),
        markdown=_path_option(config, "markdown"),
        ca_bundle=_ca_bundle(config),
        insecure=bool(config.getoption("evalchemy_insecure")),
        allow_unsafe_code=bool(config.getoption("evalchemy_allow_unsafe_code")),
    )


def _ca_bundle(config: pytest.Config) -> Path | None:
    path = _path_option(config, "ca_bundle")
    if path is None:
        return None
    if config.getoption("evalchemy_insecure"):
        raise pytest.UsageError(
            "--evalchemy-ca-bundle checks the certificate, --evalchemy-insecure skips the check: give one"
        )
    if not path.is_file():
        raise pytest.UsageError(f"--evalchemy-ca-bundle: no file at {path}")
    return path


def _path_option(config: pytest.Config, name: str) -> Path | None:
    value, base = _raw(config, name)
    return (base / value).absolute() if value else None


# ---------------------------------------------------------------- hooks and the fixture


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


@pytest.hookimpl(trylast=True)
def pytest_evalchemy_summary(config: pytest.Config, summary: dict[str, Any]) -> dict[str, Any]:
    """The plugin's summary as it is; an implementation of a user's runs before this one."""
    return summary


@pytest.fixture
def evalchemy(request: pytest.FixtureRequest) -> Evalchemy:
    """Run lm-eval tasks from a test: ``evalchemy.run("mini_arc", limit=50).metric("acc")``."""
    state = request.config.stash.get(STATE, None)
    if state is None:
        # Like the plugin itself: without an endpoint an ordinary pytest run is unaffected.
        pytest.skip("evalchemy: no --evalchemy-endpoint or --evalchemy-serve given")
    return Evalchemy(request.node, state, execute_item, request_hook(request.node))


# ---------------------------------------------------------------- state


@dataclass
class EvalchemyState:
    """Per-process state, on ``config.stash``."""

    options: Options
    eval_config: EvalConfig
    plan: list[PlannedItem]
    run_id: str
    started_at: str
    is_worker: bool
    settings: RunSettings | None = None
    endpoints: list[EndpointInfo] = field(default_factory=list)
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # records of a resumed run
    worker_index: int | None = None

    def settings_for(self, planned: PlannedItem) -> RunSettings | None:
        """The run's settings with the endpoint that serves ``planned``."""
        if self.settings is None or len(self.endpoints) < 2:
            return self.settings
        enabled = [p.key for p in self.plan if p.enabled]
        position = enabled.index(planned.key) if planned.key in enabled else 0
        return replace(
            self.settings, endpoint=pick_endpoint(self.endpoints, self.worker_index, position)
        )

    @property
    def paths(self) -> RunPaths:
        return RunPaths.create(self.options.output, self.run_id)

    def make_settings(self, endpoint: EndpointInfo) -> RunSettings:
        o = self.options
        return RunSettings(
            endpoint=endpoint,
            paths=self.paths,
            batch_size=o.batch_size,
            limit=o.limit,
            max_length=o.max_length,
            concurrency=o.concurrency,
            max_retries=o.max_retries,
            tokenizer=o.tokenizer,
            api_key=o.api_key,
            default_timeout=o.timeout,
            include_paths=self.eval_config.lm_eval_include_paths,
            cache_root=None if o.no_cache else o.output / ".cache",
            log_level=o.log_level,
            verify=o.verify,
            allow_unsafe_code=o.allow_unsafe_code,
            extra_thresholds=o.thresholds,
            gate=o.gate,
        )

    def header(self) -> dict[str, Any]:
        """The summary's run-wide fields (no credentials)."""
        endpoint = self.settings.endpoint if self.settings else None
        return {
            "run_id": self.run_id,
            "endpoint": redact_url(endpoint.url)
            if endpoint
            else (redact_url(self.options.endpoint or "")),
            "model": endpoint.model if endpoint else self.options.model,
            "config": {"path": str(self.eval_config.path), "sha256": self.eval_config.sha256},
            "gate": self.options.gate.to_dict(),
            "seeds": {
                "random_seed": 0,
                "numpy_random_seed": 1234,
                "torch_random_seed": 1234,
                "fewshot_random_seed": 1234,
            },
            "settings": {
                "batch_size": self.options.batch_size,
                "limit": self.options.limit,
                "max_length": self.options.max_length
                or (endpoint.max_model_len if endpoint else None)
                or DEFAULT_MAX_LENGTH,
                "concurrency": self.options.concurrency,
                "tokenizer": self.options.tokenizer
                or ("remote" if endpoint and endpoint.remote_tokenizer else None),
                "max_retries": self.options.max_retries,
            },
        }


STATE = pytest.StashKey[EvalchemyState]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _active(config: pytest.Config) -> bool:
    return any(_raw(config, name)[0] for name in ("endpoint", "serve"))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # Without an endpoint the plugin adds nothing: an ordinary pytest run is unaffected.
    if not _active(config):
        return
    options = resolve_options(config)
    try:
        options = _with_endpoint(options)
        eval_config = load_config(options.config_path)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
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
        state.previous = _previous_records(state)
    config.stash[STATE] = state
    _collect_config_file(config, options.config_path)
    _interrupt_on_sigterm(config)
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
        config.pluginmanager.register(EvalchemyReporter(config, state), "evalchemy-reporter")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(XdistHooks(state), "evalchemy-xdist")


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


def _previous_records(state: EvalchemyState) -> dict[str, dict[str, Any]]:
    """The item records of the run being resumed."""
    path = state.paths.summary
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise pytest.UsageError(
            f"--evalchemy-resume {state.run_id}: no summary at {path}; check the run id and --evalchemy-output"
        ) from None
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(
            f"--evalchemy-resume {state.run_id}: cannot read {path}: {exc}"
        ) from None
    state.started_at = summary.get("started_at") or state.started_at
    return dict(summary.get("tasks") or {})


def _with_endpoint(options: Options) -> Options:
    endpoints = split_endpoints(options.endpoint)
    return replace(options, endpoint=endpoints[0], endpoints=endpoints) if endpoints else options


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
    enabled = [item for item in state.plan if item.enabled]
    names = {n for item in enabled for n in item.task.tasks}
    try:
        check_writable(options.output)
    except EvalchemyError as exc:
        # Before any request, and without the summary of errors below: it could not be written.
        raise pytest.UsageError(f"evalchemy: {exc}") from None
    try:
        if options.serve:
            url = _start_server(config, state)
            options = state.options = replace(options, endpoint=url, endpoints=(url,))
        infos = check_endpoints(
            options.endpoints,
            allow_mixed_models=options.allow_mixed_models,
            model=options.model,
            api_key=options.api_key,
            local_tokenizer=options.tokenizer,
            need_tokenizer=catalog.needs_tokenizer(names, state.eval_config.lm_eval_include_paths),
            verify=options.verify,
        )
    except EvalchemyError as exc:
        reporter: EvalchemyReporter | None = config.pluginmanager.get_plugin("evalchemy-reporter")
        if reporter is not None and not isinstance(exc, type(None)):
            reporter.fail_all(enabled, f"endpoint check failed: {exc}")
        raise pytest.UsageError(f"evalchemy endpoint check failed: {exc}") from None
    state.endpoints = infos
    state.settings = state.make_settings(infos[0])


def _start_server(config: pytest.Config, state: EvalchemyState) -> str:
    """Start the session's vLLM server (one for the whole run, also under xdist); it is stopped
    when pytest unconfigures, on failure and on Ctrl-C too."""
    from .serve import ServeError, ServeSpec, VllmServer

    o = state.options
    spec = ServeSpec(
        model=o.serve or "",
        log_path=state.paths.root / "vllm_server.log",
        python=o.vllm_python or sys.executable,
        gpu=o.gpu,
        extra_args=o.serve_args,
        startup_timeout=o.serve_timeout,
        cache_dir=config.rootpath / ".cache",
    )
    server = VllmServer(spec)
    config.add_cleanup(server.stop)
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    try:
        if terminal is not None:
            terminal.write_line(f"evalchemy: starting vLLM on {o.serve} (log: {spec.log_path})")
        for warning in server.start():
            if terminal is not None:
                terminal.write_line(f"evalchemy: {warning}", yellow=True)
        server.wait_ready()
    except ServeError as exc:
        server.stop()
        raise EndpointError(f"the vLLM server did not start: {exc}") from None
    return server.completions_url


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
    detail = f"{word} ({requests['done']} requests, {requests['per_s']:.1f}/s)"
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
        e = state.settings.endpoint
        lines.append(
            f"evalchemy: endpoint {redact_url(e.url)}, model {e.model}, run {state.run_id}"
        )
    return lines


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
            if record["status"] == "failed":
                raise ItemFailed(
                    f"{self.planned.key}: {record.get('message', 'failed')} (from the resumed run)"
                )
            return
        if settings is None:
            raise ItemFailed("the endpoint check did not run; no endpoint information")
        record = base_record(self.planned, settings)
        try:
            execute_item(self.planned, settings, record, request_hook(self))
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
        if isinstance(excinfo.value, (ItemFailed, ItemError)):
            state = self.config.stash[STATE]
            where = (
                state.paths.item_dir(self.planned.benchmark, self.planned.task.key) / "lm_eval.log"
            )
            return f"{excinfo.value}\nlm-eval log: {where}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int, str]:
        # pytest 9 needs an int line, or a skipped item crashes the run.
        return self.path, 0, f"{self.planned.benchmark}::{self.planned.task.key}"


class ItemError(Exception):
    """lm-eval raised while running the item."""


def request_hook(item: pytest.Item) -> Callable[[HarnessRequest], HarnessRequest]:
    """The ``pytest_evalchemy_item_request`` hook as the callback ``run_item`` takes."""

    def adjust(request: HarnessRequest) -> HarnessRequest:
        changed = item.ihook.pytest_evalchemy_item_request(item=item, request=request)
        return request if changed is None else changed

    return adjust


def execute_item(
    planned: PlannedItem,
    settings: RunSettings,
    record: dict[str, Any],
    adjust: Callable[[HarnessRequest], HarnessRequest] | None = None,
) -> None:
    """Run an item into ``record``, which says how it ended however it ends; re-raises (a
    config item and ``evalchemy.run()`` share this)."""
    try:
        run_item(planned, settings, record, adjust)
    except ItemFailed:
        raise
    except pytest.fail.Exception as exc:
        if "Timeout" in str(exc):
            record["status"] = "timeout"
            record["message"] = f"timed out after {record['duration_s']:.1f}s ({exc})"
        else:
            record["status"] = "failed"
            record["message"] = str(exc)
        raise
    except KeyboardInterrupt:
        record["status"] = "interrupted"
        record["message"] = "interrupted"
        raise
    except Exception as exc:
        record["status"] = "error"
        # The cause in words; an HTTP error quotes the URL, credentials and all.
        record["message"] = scrub(describe_error(exc, settings.max_retries), settings.secrets)
        raise ItemError(f"{planned.key}: lm-eval failed: {record['message']}") from exc


# ---------------------------------------------------------------- the reporter (controller only)


class EvalchemyReporter:
    """Writes the results folder and prints the score table, from the reports of the items
    (sent by the workers under xdist)."""

    def __init__(self, config: pytest.Config, state: EvalchemyState) -> None:
        self.config = config
        self.state = state
        self.by_suffix = {f"::{p.benchmark}::{p.task.key}": p for p in state.plan}
        self._recorder: RunRecorder | None = None
        self.report_path: Path | None = None
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
        """Record every item as an error (the run cannot start) and write the summary."""
        for planned in items:
            record = base_record(planned, None)
            record["status"] = "error"
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
            record["status"] = "running"
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
            record["status"] = "skipped"
            longrepr = report.longrepr
            record["message"] = (
                longrepr[2].removeprefix("Skipped: ")
                if isinstance(longrepr, tuple)
                else planned.reason
            )
        elif report.when == "call":
            if record["status"] in ("pending", "running"):
                record["status"] = {"passed": "passed", "failed": "error", "skipped": "skipped"}[
                    report.outcome
                ]
            record["duration_s"] = round(report.duration, 3)
        elif report.failed:
            crashed = report.when not in (
                "setup",
                "teardown",
            )  # xdist reports a crashed worker as "???"
            record["status"] = "crashed" if crashed else "error"
            record["message"] = (report.longreprtext.strip().splitlines() or [""])[-1]
        else:
            return
        self.recorder.update(planned.key, record, report.longreprtext if report.failed else "")

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self._recorder is not None:
            self._recorder.header = self.state.header()
            self._recorder.header["gate"]["notes"] = self._gate_notes()
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
            if report.failed and record["status"] == "passed":
                # The run passed its own checks, the test's assertion did not: the entry says so.
                crash = getattr(report.longrepr, "reprcrash", None)
                reason = getattr(crash, "message", None) or report.longreprtext.strip()
                record["status"] = "failed"
                record["message"] = f"the test failed: {(reason.splitlines() or [''])[0]}"
            self.recorder.update(data["key"], record, report.longreprtext if report.failed else "")

    def _write_report(self) -> None:
        recorder = self._recorder
        if recorder is None or not recorder.written or self.config.getoption("evalchemy_no_report"):
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
        gate = recorder.header.get("gate", {})
        if gate.get("mode") == "ci" or gate.get("baseline"):
            line = f"gate: {gate['mode']} at {gate['confidence']:g} confidence"
            if gate.get("baseline"):
                line += f"; baseline {gate['baseline']} (max drop {gate['max_drop']:g})"
            terminalreporter.write_line(line)
        for note in gate.get("notes", ()):
            terminalreporter.write_line(f"note: {note}", yellow=True)
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


class XdistHooks:
    """Hands the controller's run id and endpoint check to the workers."""

    def __init__(self, state: EvalchemyState) -> None:
        self.state = state

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        state = self.state
        node.workerinput["evalchemy"] = {
            "run_id": state.run_id,
            "started_at": state.started_at,
            "endpoints": [e.to_dict() for e in state.endpoints],
        }
