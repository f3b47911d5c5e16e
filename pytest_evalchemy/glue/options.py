"""The plugin's options: command line, environment and ini, resolved into one ``Options``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..core.config import Threshold, normalize_metric
from ..core.errors import EvalchemyError
from ..core.results import (
    DEFAULT_CONFIG,
    DEFAULT_OUTPUT,
    validate_run_id,
)
from ..judge.baseline import load_baseline
from ..judge.gating import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_DROP,
    GATE_MODES,
    GateSettings,
)
from ..run.chat_settings import ChatOptions
from ..run.concurrency import AUTO, parse_concurrency
from ..run.concurrency import DEFAULT_MAX as DEFAULT_MAX_CONCURRENCY
from ..run.reasoning import parse_reasoning

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
        "auto (adapt to the server) or a fixed number of concurrent requests per item (lm-eval num_concurrent). Default: auto. Env: EVALCHEMY_CONCURRENCY",
        str,
    ),
    (
        "--evalchemy-max-concurrency",
        "max_concurrency",
        f"Most prompts in flight per endpoint with --evalchemy-concurrency auto. Default: {DEFAULT_MAX_CONCURRENCY}",
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
        "--evalchemy-wait-for-endpoint",
        "wait_for_endpoint",
        "Seconds to wait for a server that is not up yet (connection refused, 503, no model "
        "listed) before the run fails; progress is printed; 0: fail at once. Default: 5. Env: EVALCHEMY_WAIT_FOR_ENDPOINT",
        float,
    ),
    (
        "--evalchemy-outage-timeout",
        "outage_timeout",
        "Seconds a server that goes away during the items (refused, reset, 5xx, 429) is waited "
        "for, with back-off and Retry-After honoured, before the item errors; 0: no waiting. "
        "Default: 180. Env: EVALCHEMY_OUTAGE_TIMEOUT",
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
        "--evalchemy-replicas",
        "replicas",
        "vLLM servers --evalchemy-serve starts (replica i on the i-th device of --evalchemy-gpu), behind vllm-router. Default: 1",
        int,
    ),
    (
        "--evalchemy-router",
        "router",
        "URL of a vllm-router you run in front of your replicas: every request goes through it",
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
        "--evalchemy-chat-template",
        "chat_template",
        "Format every task's prompts with the served model's chat template: true, false, or the name of one of the server's templates (lm-eval --apply_chat_template). Default: each task's apply_chat_template",
        str,
    ),
    (
        "--evalchemy-system-instruction",
        "system_instruction",
        "System message before every task's prompt (lm-eval --system_instruction)",
        str,
    ),
    (
        "--evalchemy-fewshot-as-multiturn",
        "fewshot_as_multiturn",
        "Few-shot examples as user/assistant turns: true or false (lm-eval --fewshot_as_multiturn). Default: true with a chat template",
        str,
    ),
    (
        "--evalchemy-reasoning",
        "reasoning",
        "Reasoning model: true, false or auto (the endpoint check looks for thinking). Default: each task's reasoning, else auto. Env: EVALCHEMY_REASONING",
        str,
    ),
    (
        "--evalchemy-think-end-token",
        "think_end_token",
        "Text that ends a reasoning model's thinking. Default: </think>",
        str,
    ),
    (
        "--evalchemy-thinking-budget",
        "thinking_budget",
        "Tokens a reasoning model may think, on top of max_gen_toks for the answer. Default: 2048",
        int,
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
    "wait_for_endpoint": "EVALCHEMY_WAIT_FOR_ENDPOINT",
    "outage_timeout": "EVALCHEMY_OUTAGE_TIMEOUT",
    "reasoning": "EVALCHEMY_REASONING",
    "concurrency": "EVALCHEMY_CONCURRENCY",
}
DEFAULT_OUTAGE_TIMEOUT = 180.0  # a GPU vLLM restart takes 30-120 s


def add_options(parser: pytest.Parser) -> None:
    """The plugin's command-line options and their ini twins."""
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
        "--evalchemy-strict-context",
        action="store_true",
        default=None,
        help="Fail items whose prompts are cut to fit max_length or cannot fit with max_gen_toks "
        "(default: a warning in the report). Ini: evalchemy_strict_context = true",
    )
    parser.addini(
        "evalchemy_strict_context",
        "Fail items whose prompts are cut to fit the context (true/false)",
        type="bool",
        default=False,
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
        "--evalchemy-log-samples",
        action="store_true",
        default=False,
        help="Log every item's samples (on by itself with --evalchemy-baseline): make a run "
        "meant as a baseline with it, so later runs are paired with it document by document",
    )
    group.addoption(
        "--evalchemy-resume",
        metavar="RUN_ID",
        default=None,
        help="Complete the run RUN_ID in place: finished items keep their results, the others "
        "continue from their cached responses",
    )
    group.addoption(
        "--evalchemy-resume-force",
        action="store_true",
        default=False,
        help="With --evalchemy-resume: complete the run even though its config, settings, "
        "model or tokenizer differ. This mixes two runs' scores; the summary's 'resumes' says so",
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
    concurrency: int | str  # a number, or "auto"
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
    resume_force: bool = False
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
    wait_for_endpoint: float | None = None
    outage_timeout: float = DEFAULT_OUTAGE_TIMEOUT
    strict_context: bool = False
    log_samples: bool = False
    chat: ChatOptions = field(default_factory=ChatOptions)
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    replicas: int = 1
    router: str | None = None

    @property
    def verify(self) -> bool | str:
        """requests' and lm-eval's TLS setting: True, False, or the CA bundle's path."""
        if self.insecure:
            return False
        return str(self.ca_bundle) if self.ca_bundle else True


def _boolean(value: str) -> bool | None:
    text = value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    return None


def _chat_options(config: pytest.Config) -> ChatOptions:
    """--evalchemy-chat-template, -system-instruction, -fewshot-as-multiturn, -reasoning,
    -think-end-token and -thinking-budget, each refused with the place it came from."""
    template, _ = setting_value(config, "chat_template")
    chat_template: bool | str | None = None
    if template is not None:
        if not template.strip():
            raise pytest.UsageError(
                f"{setting_source(config, 'chat_template')}: expected true, false or a template "
                "name, got an empty value"
            )
        flag = _boolean(template)
        chat_template = template.strip() if flag is None else flag
    multiturn_value, _ = setting_value(config, "fewshot_as_multiturn")
    multiturn = None
    if multiturn_value is not None:
        multiturn = _boolean(multiturn_value)
        if multiturn is None:
            raise pytest.UsageError(
                f"{setting_source(config, 'fewshot_as_multiturn')}: expected true or false, "
                f"got {multiturn_value!r}"
            )
    reasoning_value, _ = setting_value(config, "reasoning")
    reasoning = None
    if reasoning_value is not None:
        try:
            parsed = parse_reasoning(reasoning_value)
        except ValueError as exc:
            raise pytest.UsageError(f"{setting_source(config, 'reasoning')}: {exc}") from None
        reasoning = "auto" if parsed is None else str(parsed).lower()
    end_token, _ = setting_value(config, "think_end_token")
    if end_token is not None and not end_token.strip():
        raise pytest.UsageError(
            f"{setting_source(config, 'think_end_token')}: expected the text that ends the "
            "thinking, e.g. </think>; got an empty value"
        )
    budget_value, _ = setting_value(config, "thinking_budget")
    budget = None
    if budget_value is not None:
        try:
            budget = int(budget_value)
        except ValueError:
            budget = -1
        if budget < 0:
            raise pytest.UsageError(
                f"{setting_source(config, 'thinking_budget')}: expected a whole number of "
                f"tokens (0 or more), got {budget_value!r}"
            )
    return ChatOptions(
        chat_template=chat_template,
        system_instruction=setting_value(config, "system_instruction")[0],
        fewshot_as_multiturn=multiturn,
        reasoning=reasoning,
        think_end_token=end_token,
        thinking_budget=budget,
    )


def setting_value(config: pytest.Config, name: str) -> tuple[str | None, Path]:
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


def setting_source(config: pytest.Config, name: str) -> str:
    """Where a setting's value came from, as a user would look for it."""
    flag = f"--evalchemy-{name.replace('_', '-')}"
    if config.getoption(f"evalchemy_{name}") is not None:
        return flag
    env = _ENV.get(name)
    if env and os.environ.get(env):
        return f"{flag} (from the environment variable {env})"
    where = config.inipath or config.rootpath
    return f"{flag} (from evalchemy_{name} in {where})"


def _concurrency(config: pytest.Config) -> int | str:
    value, _ = setting_value(config, "concurrency")
    if value is None:
        return AUTO
    try:
        return parse_concurrency(value)
    except ValueError:
        raise pytest.UsageError(
            f"{setting_source(config, 'concurrency')}: expected auto or a whole number of at "
            f"least 1, got {value!r}"
        ) from None


def _number(config: pytest.Config, name: str, kind: type, minimum: float) -> Any:
    value, _ = setting_value(config, name)
    if value is None:
        return None
    where = setting_source(config, name)
    try:
        number = kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise pytest.UsageError(f"{where}: expected {what}, got {value!r}") from None
    if not math.isfinite(number) or number < minimum:
        raise pytest.UsageError(f"{where}: must be at least {minimum:g}, got {value!r}")
    return number


def _limit(config: pytest.Config) -> int | float | None:
    """--evalchemy-limit: a count of samples (a whole number >= 1) or a fraction in (0, 1]."""
    value, _ = setting_value(config, "limit")
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if 0 < number < 1:
        return number
    # 1 and 1.0 alike: lm-eval reads a limit of 1.0 as one sample, not the whole data set.
    if math.isfinite(number) and number >= 1 and number.is_integer():
        return int(number)
    raise pytest.UsageError(
        f"{setting_source(config, 'limit')}: expected a number of samples (a whole number "
        f">= 1, e.g. 10) or a fraction of the data set in (0, 1], e.g. 0.1; got {value!r}"
    )


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
    mode = (setting_value(config, "gate")[0] or "point").lower()
    if mode not in GATE_MODES:
        raise pytest.UsageError(
            f"--evalchemy-gate: expected {' or '.join(GATE_MODES)}, got {mode!r}"
        )
    confidence = _number(config, "confidence", float, 0)
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
    if not 0 < confidence < 1:
        raise pytest.UsageError(
            f"{setting_source(config, 'confidence')}: expected a number between 0 and 1, e.g. "
            f"0.95, got {confidence!r}"
        )
    max_drop = _number(config, "max_drop", float, 0)
    baseline_value, baseline_base = setting_value(config, "baseline")
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
    endpoint, _ = setting_value(config, "endpoint")
    config_value, config_base = setting_value(config, "config")
    config_path = config_base / (config_value or DEFAULT_CONFIG)
    if config_value is None and not config_path.exists():
        config_path = config.rootpath / DEFAULT_CONFIG
    output_value, output_base = setting_value(config, "output")
    limit = _limit(config)
    log_level = (setting_value(config, "log_level")[0] or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise pytest.UsageError(
            f"--evalchemy-log-level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}"
        )
    run_id = setting_value(config, "run_id")[0]
    resume = config.getoption("evalchemy_resume")
    if config.getoption("evalchemy_resume_force") and resume is None:
        raise pytest.UsageError(
            "--evalchemy-resume-force completes a run: give it with --evalchemy-resume RUN_ID"
        )
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
        model=setting_value(config, "model")[0],
        run_id=run_id,
        output=(output_base / (output_value or DEFAULT_OUTPUT)).absolute(),
        batch_size=_number(config, "batch_size", int, 1),
        max_length=_number(config, "max_length", int, 16),
        concurrency=_concurrency(config),
        max_concurrency=_number(config, "max_concurrency", int, 1) or DEFAULT_MAX_CONCURRENCY,
        tokenizer=setting_value(config, "tokenizer")[0],
        limit=limit,
        timeout=_number(config, "timeout", float, 0.001),
        max_retries=_number(config, "max_retries", int, 1) or 3,
        log_level=log_level,
        thresholds=tuple(parse_threshold(t) for t in config.getoption("evalchemy_threshold")),
        allow_mixed_models=bool(config.getoption("evalchemy_allow_mixed_models")),
        no_cache=bool(config.getoption("evalchemy_no_cache")),
        resume=resume,
        resume_force=bool(config.getoption("evalchemy_resume_force")),
        serve=setting_value(config, "serve")[0],
        gpu=setting_value(config, "gpu")[0],
        serve_args=tuple(config.getoption("evalchemy_serve_arg")),
        vllm_python=setting_value(config, "vllm_python")[0],
        serve_timeout=_number(config, "serve_timeout", float, 1) or 600.0,
        api_key=os.environ.get("EVALCHEMY_API_KEY") or os.environ.get("OPENAI_API_KEY") or None,
        gate=_gate_settings(config),
        markdown=_path_option(config, "markdown"),
        ca_bundle=_ca_bundle(config),
        insecure=bool(config.getoption("evalchemy_insecure")),
        allow_unsafe_code=bool(config.getoption("evalchemy_allow_unsafe_code")),
        wait_for_endpoint=_number(config, "wait_for_endpoint", float, 0),
        outage_timeout=_or(_number(config, "outage_timeout", float, 0), DEFAULT_OUTAGE_TIMEOUT),
        strict_context=_strict_context(config),
        log_samples=bool(config.getoption("evalchemy_log_samples")),
        chat=_chat_options(config),
        **_fleet(config),
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _strict_context(config: pytest.Config) -> bool:
    flag = config.getoption("evalchemy_strict_context")
    return bool(flag) if flag is not None else bool(config.getini("evalchemy_strict_context"))


def _fleet(config: pytest.Config) -> dict[str, Any]:
    """--evalchemy-replicas and --evalchemy-router, checked against --evalchemy-serve/-gpu."""
    from ..run.endpoint import normalize_endpoint
    from ..run.router import split_devices

    replicas = _number(config, "replicas", int, 1) or 1
    serve = setting_value(config, "serve")[0]
    router = setting_value(config, "router")[0]
    if replicas > 1 and not serve:
        raise pytest.UsageError(
            f"--evalchemy-replicas {replicas}: replicas are vLLM servers that --evalchemy-serve "
            "MODEL starts; for servers you run, repeat --evalchemy-endpoint"
        )
    if router and serve:
        raise pytest.UsageError(
            "--evalchemy-router is a router you run in front of your own replicas; "
            "--evalchemy-serve starts its servers (and a router for --evalchemy-replicas): give one"
        )
    try:
        split_devices(setting_value(config, "gpu")[0], replicas)
    except ValueError as exc:
        raise pytest.UsageError(
            f"--evalchemy-gpu: {exc}; give one device per replica, e.g. --evalchemy-gpu 0,1"
        ) from None
    return {"replicas": replicas, "router": normalize_endpoint(router) if router else None}


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
    value, base = setting_value(config, name)
    return (base / value).absolute() if value else None
