"""The plugin's options: command line, environment and ini, resolved into one ``Options``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from ..core.config import Threshold, normalize_metric
from ..core.defaults import (
    DEFAULT_CONFIDENCE,
    DEFAULT_CONFIG,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DROP,
    DEFAULT_OUTPUT,
)
from ..core.endpoint import Endpoint, parse_endpoints
from ..core.errors import EvalchemyError
from ..core.results import validate_run_id
from ..judge.baseline import load_baseline
from ..judge.gating import GATE_MODES, GateSettings
from ..run.chat_settings import ChatOptions
from ..run.concurrency import AUTO, parse_concurrency
from ..run.reasoning import parse_reasoning
from ..run.tokenizer_check import parse_add_bos
from .settings import API_KEY_ENVS, BY_NAME, INI, LOG_LEVELS, lookup, source_text

DEFAULT_OUTAGE_TIMEOUT = 180.0  # a GPU vLLM restart takes 30-120 s


@dataclass(frozen=True)
class Options:
    """The plugin's settings, resolved command line > environment > ini > default."""

    endpoint: Endpoint | None  # the first of ``endpoints``
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
    endpoints: tuple[Endpoint, ...] = ()  # normalized, in the order given
    allow_mixed_models: bool = False
    no_cache: bool = False
    no_report: bool = False
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
    add_bos_token: str | None = None  # "true", "false", "auto"; None: each task's
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    replicas: int = 1
    router: Endpoint | None = None

    @property
    def verify(self) -> bool | str:
        """requests' and lm-eval's TLS setting: True, False, or the CA bundle's path."""
        return _verify(self.insecure, self.ca_bundle)

    def endpoint_at(self, url: str) -> Endpoint:
        """A server or router started for the run, with the run's API key and TLS setting."""
        return Endpoint.parse(url, api_key=self.api_key, verify=self.verify)


def _verify(insecure: bool, ca_bundle: Path | None) -> bool | str:
    if insecure:
        return False
    return str(ca_bundle) if ca_bundle else True


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


def _lookup(config: pytest.Config, name: str) -> tuple[Any, str | None]:
    return lookup(
        name, config.getoption(BY_NAME[name].ini), os.environ, config.getini(BY_NAME[name].ini)
    )


def setting_value(config: pytest.Config, name: str) -> tuple[str | None, Path]:
    """A setting's value and the folder a relative path in it is relative to."""
    value, origin = _lookup(config, name)
    if origin is None:
        return None, config.invocation_params.dir
    if isinstance(value, list):
        value = ",".join(value)
    if origin == INI:
        return str(value), config.inipath.parent if config.inipath else config.rootpath
    return str(value), config.invocation_params.dir


def setting_source(config: pytest.Config, name: str) -> str:
    """Where a setting's value came from, as a user would look for it."""
    return source_text(name, _lookup(config, name)[1], config.inipath or config.rootpath)


def _switch(config: pytest.Config, name: str) -> bool:
    """A switch: given on the command line, or true in the ini file."""
    return bool(_lookup(config, name)[0])


def _listed(config: pytest.Config, name: str) -> list[str]:
    """A repeatable option's values: the command line's, else the ini file's lines."""
    return list(_lookup(config, name)[0] or [])


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


def _number(config: pytest.Config, name: str) -> Any:
    """A number option, checked against its type and bound of the table."""
    kind, minimum = BY_NAME[name].kind, BY_NAME[name].minimum or 0
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


def _share(config: pytest.Config, name: str) -> float | None:
    """A share option: a number within its bounds of the table (0 to 1)."""
    setting = BY_NAME[name]
    low = setting.minimum if setting.minimum is not None else 0.0
    high = setting.maximum if setting.maximum is not None else 1.0
    value, _ = setting_value(config, name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not low <= number <= high:  # NaN included
        raise pytest.UsageError(
            f"{setting_source(config, name)}: expected a share between {low:g} and {high:g}, "
            f"e.g. 0.5; got {value!r}"
        )
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
    """--evalchemy-gate, -confidence, -max-drop, -max-invalid-share and -baseline (loaded
    here: under xdist each worker reads the baseline itself)."""
    mode = (setting_value(config, "gate")[0] or "point").lower()
    if mode not in GATE_MODES:
        raise pytest.UsageError(
            f"{setting_source(config, 'gate')}: expected {' or '.join(GATE_MODES)}, got {mode!r}"
        )
    confidence = _number(config, "confidence")
    confidence = DEFAULT_CONFIDENCE if confidence is None else confidence
    if not 0 < confidence < 1:
        raise pytest.UsageError(
            f"{setting_source(config, 'confidence')}: expected a number between 0 and 1, e.g. "
            f"0.95, got {confidence!r}"
        )
    max_drop = _number(config, "max_drop")
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
        max_invalid_share=_share(config, "max_invalid_share"),
    )


def _endpoints(config: pytest.Config) -> tuple[Endpoint, ...]:
    """The endpoints, built once: every --evalchemy-endpoint (each may list several,
    separated by commas), else the environment's or the ini's list; duplicates dropped."""
    value, _ = _lookup(config, "endpoint")
    values = value if isinstance(value, list) else [value] if value else []
    try:
        return parse_endpoints(" ".join(values))
    except EvalchemyError as exc:
        raise pytest.UsageError(str(exc)) from None


def resolve_options(config: pytest.Config) -> Options:
    endpoints = _endpoints(config)
    api_key = next((os.environ[k] for k in API_KEY_ENVS if os.environ.get(k)), None)
    ca_bundle, insecure = _ca_bundle(config), _switch(config, "insecure")
    # The API key and TLS setting every endpoint of the run shares.
    access: dict[str, Any] = {"api_key": api_key, "verify": _verify(insecure, ca_bundle)}
    endpoints = tuple(replace(e, **access) for e in endpoints)
    config_value, config_base = setting_value(config, "config")
    config_path = config_base / (config_value or DEFAULT_CONFIG)
    if config_value is None and not config_path.exists():
        config_path = config.rootpath / DEFAULT_CONFIG
    output_value, output_base = setting_value(config, "output")
    limit = _limit(config)
    log_level = (setting_value(config, "log_level")[0] or "INFO").upper()
    if log_level not in LOG_LEVELS:
        raise pytest.UsageError(
            f"{setting_source(config, 'log_level')}: expected DEBUG, INFO, WARNING or ERROR, "
            f"got {log_level!r}"
        )
    run_id = setting_value(config, "run_id")[0]
    resume = setting_value(config, "resume")[0]
    if _switch(config, "resume_force") and resume is None:
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
            where = "--evalchemy-resume" if resume is not None else setting_source(config, "run_id")
            raise pytest.UsageError(f"{where}: {exc}") from None
    return Options(
        endpoint=endpoints[0] if endpoints else None,
        endpoints=endpoints,
        config_path=config_path.absolute(),
        model=setting_value(config, "model")[0],
        run_id=run_id,
        output=(output_base / (output_value or DEFAULT_OUTPUT)).absolute(),
        batch_size=_number(config, "batch_size"),
        max_length=_number(config, "max_length"),
        concurrency=_concurrency(config),
        max_concurrency=_number(config, "max_concurrency") or DEFAULT_MAX_CONCURRENCY,
        tokenizer=setting_value(config, "tokenizer")[0],
        limit=limit,
        timeout=_number(config, "timeout"),
        max_retries=_number(config, "max_retries") or 3,
        log_level=log_level,
        thresholds=tuple(parse_threshold(t) for t in _listed(config, "threshold")),
        allow_mixed_models=_switch(config, "allow_mixed_models"),
        no_cache=_switch(config, "no_cache"),
        no_report=_switch(config, "no_report"),
        resume=resume,
        resume_force=_switch(config, "resume_force"),
        serve=setting_value(config, "serve")[0],
        gpu=setting_value(config, "gpu")[0],
        serve_args=tuple(_listed(config, "serve_arg")),
        vllm_python=setting_value(config, "vllm_python")[0],
        serve_timeout=_number(config, "serve_timeout") or 600.0,
        api_key=api_key,
        gate=_gate_settings(config),
        markdown=_path_option(config, "markdown"),
        ca_bundle=ca_bundle,
        insecure=insecure,
        allow_unsafe_code=_switch(config, "allow_unsafe_code"),
        wait_for_endpoint=_number(config, "wait_for_endpoint"),
        outage_timeout=_or(_number(config, "outage_timeout"), DEFAULT_OUTAGE_TIMEOUT),
        strict_context=_switch(config, "strict_context"),
        log_samples=_switch(config, "log_samples"),
        chat=_chat_options(config),
        add_bos_token=_add_bos_token(config),
        **_fleet(config, access),
    )


def _add_bos_token(config: pytest.Config) -> str | None:
    value, _ = setting_value(config, "add_bos_token")
    if value is None:
        return None
    try:
        return parse_add_bos(value)
    except ValueError as exc:
        raise pytest.UsageError(f"{setting_source(config, 'add_bos_token')}: {exc}") from None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _fleet(config: pytest.Config, access: dict[str, Any]) -> dict[str, Any]:
    """--evalchemy-replicas and --evalchemy-router, checked against --evalchemy-serve/-gpu."""
    from ..run.router import split_devices

    replicas = _number(config, "replicas") or 1
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
    return {
        "replicas": replicas,
        "router": Endpoint.parse(router, **access) if router else None,
    }


def _ca_bundle(config: pytest.Config) -> Path | None:
    path = _path_option(config, "ca_bundle")
    if path is None:
        return None
    if _switch(config, "insecure"):
        raise pytest.UsageError(
            "--evalchemy-ca-bundle checks the certificate, --evalchemy-insecure skips the check: give one"
        )
    if not path.is_file():
        raise pytest.UsageError(f"--evalchemy-ca-bundle: no file at {path}")
    return path


def _path_option(config: pytest.Config, name: str) -> Path | None:
    value, base = setting_value(config, name)
    return (base / value).absolute() if value else None
