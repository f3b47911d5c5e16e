"""One test item's evaluation: build the lm-eval request from the config and the run's
settings, run it, keep its files, and judge the outcome. Imports no pytest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import harness
from .concurrency import AUTO, DEFAULT_MAX, AdaptiveLimit, shared_limit
from .config import PlannedItem, Threshold
from .endpoint import DEFAULT_MAX_LENGTH, EndpointInfo, redact_url, url_secrets
from .gating import GateSettings, NotLikeForLikeWarning, format_checks, gate_item
from .progress import RequestProgress, track
from .results import RunPaths, atomic_write_json, atomic_write_text

# lm-eval's own per-request timeout; an item timeout shorter than that lowers it below itself.
DEFAULT_REQUEST_TIMEOUT = 300


@dataclass(frozen=True)
class RunSettings:
    """The run-wide settings every item applies (command-line overrides of the config)."""

    endpoint: EndpointInfo
    paths: RunPaths
    batch_size: int | None = None
    limit: int | float | None = None
    max_length: int | None = None
    concurrency: int | str = AUTO  # a fixed number, or "auto" (the endpoint's adaptive limit)
    max_concurrency: int = DEFAULT_MAX
    max_retries: int = 3
    tokenizer: str | None = None
    api_key: str | None = None
    default_timeout: float | None = None
    include_paths: tuple[Path, ...] = ()
    log_level: str = "INFO"  # of the lm-eval log kept in the item's folder
    cache_root: Path | None = None  # lm-eval's response caches; None: no cache, no resume
    extra_thresholds: tuple[Threshold, ...] = field(default=())
    gate: GateSettings = field(default_factory=GateSettings)
    verify: bool | str = True  # TLS: True, False (--evalchemy-insecure) or a CA bundle path
    allow_unsafe_code: bool = False  # lm-eval's confirm_run_unsafe_code

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be written: the API key and the endpoint URL's credentials."""
        return (*url_secrets(self.endpoint.url), *((self.api_key,) if self.api_key else ()))


class ItemFailed(Exception):
    """The item ran but its result is not acceptable (message is shown instead of a traceback)."""


def item_timeout(item: PlannedItem, settings_default: float | None) -> float | None:
    """The item's wall-clock limit: the task's ``timeout``, else the run's default."""
    return item.task.timeout if item.task.timeout is not None else settings_default


def build_request(item: PlannedItem, settings: RunSettings) -> harness.HarnessRequest:
    """The lm-eval request of ``item`` under ``settings``."""
    task = item.task
    timeout = item_timeout(item, settings.default_timeout)
    request_timeout = DEFAULT_REQUEST_TIMEOUT
    if timeout is not None:
        request_timeout = max(1, min(DEFAULT_REQUEST_TIMEOUT, int(timeout * 0.8)))
    max_length = settings.max_length or settings.endpoint.max_model_len or DEFAULT_MAX_LENGTH
    adaptive = settings.concurrency == AUTO
    return harness.HarnessRequest(
        tasks=task.tasks,
        model=settings.endpoint.model,
        base_url=settings.endpoint.url,
        num_fewshot=task.num_fewshot,
        batch_size=settings.batch_size or task.batch_size or 1,
        limit=settings.limit if settings.limit is not None else task.limit,
        log_samples=task.log_samples,
        max_length=max_length,
        num_concurrent=settings.max_concurrency if adaptive else int(settings.concurrency),
        adaptive_concurrency=adaptive,
        max_retries=settings.max_retries,
        request_timeout=request_timeout,
        tokenizer=settings.tokenizer,
        remote_tokenizer=settings.endpoint.remote_tokenizer,
        include_paths=settings.include_paths,
        cache_prefix=cache_prefix(item, settings, max_length),
        verify_certificate=settings.verify is not False,
        ca_cert_path=settings.verify if isinstance(settings.verify, str) else None,
        confirm_run_unsafe_code=settings.allow_unsafe_code,
    )


def cache_prefix(item: PlannedItem, settings: RunSettings, max_length: int) -> str | None:
    """Where the item's lm-eval response cache lives. lm-eval keys a response by the request
    alone, not by the model: the folder is namespaced by the run (a new checkpoint served under
    the same name must never get the old one's answers; a resumed run keeps its id) and by what
    changes the answers (model, context length, tokenizer, lm-eval version). Each item has its
    own file, so parallel workers never share one."""
    if settings.cache_root is None:
        return None
    from importlib import metadata

    tokenizer = settings.tokenizer or ("remote" if settings.endpoint.remote_tokenizer else "none")
    key = json.dumps(
        [
            settings.paths.run_id,
            settings.endpoint.model,
            max_length,
            tokenizer,
            metadata.version("lm_eval"),
        ]
    )
    namespace = hashlib.sha256(key.encode()).hexdigest()[:16]
    return str(settings.cache_root / namespace / item.benchmark / item.task.key / "requests")


@contextmanager
def _env_var(name: str, value: str | None):
    """``name=value`` in the environment while the block runs (nothing when ``value`` is
    None). lm-eval's local-completions reads the key from OPENAI_API_KEY only (in model_args
    it would be copied into lm-eval's results and log), and its sync client trusts a CA only
    through REQUESTS_CA_BUNDLE (it ignores ``ca_cert_path``)."""
    if not value:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def scrub_results(results: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """``results`` without ``secrets``: lm-eval copies ``model_args`` (the URL it posts to,
    credentials included) into its results."""
    if not secrets:
        return results
    text = json.dumps(results, default=str)
    clean = harness.scrub(text, tuple(json.dumps(s)[1:-1] for s in secrets))
    return results if clean == text else json.loads(clean)


def describe_error(exc: BaseException, attempts: int) -> str:
    """What an exception out of lm-eval means for the user; lm-eval re-raises the last error
    of a request once its ``attempts`` are used up."""
    import aiohttp  # lm-eval's client with --evalchemy-concurrency > 1
    import requests  # its client otherwise

    text = f"{type(exc).__name__}: {exc}"
    if "marked as unsafe" in str(exc):
        return (
            f"{text}. The task's YAML says `unsafe_code: true` (it runs code); pass "
            "--evalchemy-allow-unsafe-code if you trust it"
        )
    if isinstance(exc, (requests.exceptions.SSLError, aiohttp.ClientSSLError)):
        cause = "TLS error talking to the endpoint (--evalchemy-ca-bundle, --evalchemy-insecure)"
    elif isinstance(exc, ValueError) and "JSON" in type(exc).__name__ + str(exc):
        cause = "the endpoint's answer was not valid JSON (a truncated or garbled body)"
    elif isinstance(exc, requests.HTTPError) and exc.response is not None:
        cause = f"the endpoint answered HTTP {exc.response.status_code}"
    elif isinstance(exc, aiohttp.ClientResponseError):
        cause = f"the endpoint answered HTTP {exc.status}"
    elif isinstance(
        exc,
        (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
        ),
    ):
        cause = "the connection to the endpoint failed (server down, restarting or resetting)"
    elif isinstance(exc, (requests.Timeout, TimeoutError)):
        cause = "the endpoint did not answer within the request timeout"
    else:
        return text
    return f"{cause}, {attempts} attempt(s) per request: {text}"


def _write_item_files(item_dir: Path, results: dict[str, Any], output_path: str | None) -> None:
    samples = results.pop("samples", None) or {}
    atomic_write_json(item_dir / "results.json", results)
    for task, rows in samples.items():
        text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        atomic_write_text(item_dir / f"samples_{task}.jsonl", text)
    if output_path:
        # The seed's per-task output_path gets a copy, relative to where the run started.
        target = Path(output_path)
        target.mkdir(parents=True, exist_ok=True)
        for path in item_dir.iterdir():
            if path.suffix in (".json", ".jsonl", ".log"):
                shutil.copy2(path, target / path.name)


def base_record(item: PlannedItem, settings: RunSettings | None) -> dict[str, Any]:
    """The summary entry of an item before it has run."""
    task = item.task
    record: dict[str, Any] = {
        "benchmark": item.benchmark,
        "task": task.key,
        "lm_eval_tasks": list(task.tasks),
        "description": task.description,
        "status": "pending",
        "duration_s": 0.0,
        "metrics": {},
        "n_samples": {},
        "message": item.reason,
        "settings": {
            "num_fewshot": task.num_fewshot,
            "limit": task.limit,
            "batch_size": task.batch_size,
        },
    }
    if settings is not None:
        record["settings"] = request_settings(build_request(item, settings))
        record["endpoint"] = redact_url(settings.endpoint.url)
        record["item_dir"] = str(
            settings.paths.item_dir(item.benchmark, task.key).relative_to(settings.paths.root)
        )
    return record


def request_settings(request: harness.HarnessRequest) -> dict[str, Any]:
    """The record's ``settings``: what of the request changes or explains a score."""
    return {
        "num_fewshot": request.num_fewshot,
        "limit": request.limit,
        "batch_size": request.batch_size,
        "max_length": request.max_length,
        "num_concurrent": AUTO if request.adaptive_concurrency else request.num_concurrent,
        **({"max_concurrency": request.num_concurrent} if request.adaptive_concurrency else {}),
    }


def run_item(
    item: PlannedItem,
    settings: RunSettings,
    record: dict[str, Any],
    adjust: Callable[[harness.HarnessRequest], harness.HarnessRequest] | None = None,
) -> None:
    """Run ``item`` and fill ``record`` in place (so a timeout or an interrupt that ends the
    run midway still leaves what was known). Raises ``ItemFailed`` when the result is not
    acceptable and lets lm-eval's own errors through. ``adjust`` may change the request (the
    ``pytest_evalchemy_item_request`` hook)."""
    request = build_request(item, settings)
    if adjust is not None:
        request = adjust(request)
        # The record says what ran, not what the config asked for.
        record["settings"] = request_settings(request)
    item_dir = settings.paths.item_dir(item.benchmark, item.task.key)
    item_dir.mkdir(parents=True, exist_ok=True)
    record["status"] = "running"
    record["lm_eval_command"] = request.cli_string()
    start = time.monotonic()
    limit: AdaptiveLimit | None = None
    if request.adaptive_concurrency:
        limit = shared_limit(request.base_url, request.num_concurrent)
    before = limit.item_start() if limit else {}
    progress = RequestProgress(item.key, concurrency=lambda: limit.limit if limit else None)
    try:
        with (
            harness.capture_log(
                item_dir / "lm_eval.log", level=settings.log_level, secrets=settings.secrets
            ),
            _env_var("OPENAI_API_KEY", settings.api_key),
            _env_var("REQUESTS_CA_BUNDLE", request.ca_cert_path),
            track(progress),
        ):
            results = harness.run(request)
    finally:
        record["duration_s"] = round(time.monotonic() - start, 3)
        record["requests"] = progress.to_dict()
        record["requests"]["concurrency"] = limit.limit if limit else request.num_concurrent
        if limit:
            # How it got there: the most in flight at once, and the server's overload answers.
            record["requests"]["adaptive"] = limit.item_stats(before)
            # The equivalent lm-eval command at the concurrency the server took.
            settled = replace(request, shown_concurrency=limit.limit)
            record["lm_eval_command"] = settled.cli_string()
    results = scrub_results(results, settings.secrets)
    record["metrics"] = harness.metrics_of(results)
    record["n_samples"] = results.get("n-samples", {})
    record["versions"] = results.get("versions", {})
    record["n_shot"] = results.get("n-shot", {})
    # lm-eval's direction of each metric: a perplexity "drops" when it rises.
    record["higher_is_better"] = results.get("higher_is_better", {})
    _write_item_files(item_dir, results, item.task.output_path)
    problem = harness.completeness_problem(results, request.limit)
    if problem:
        record["status"] = "failed"
        record["message"] = problem
        raise ItemFailed(f"{item.key}: {problem}")
    gate = gate_item(item, record, settings.extra_thresholds, settings.gate)
    record["checks"] = [c.to_dict() for c in gate.checks]
    if gate.notes:
        record["gate_notes"] = gate.notes
    for text in gate.warnings:
        warnings.warn(NotLikeForLikeWarning(text), stacklevel=2)
    if gate.failed:
        record["status"] = "failed"
        record["message"] = gate.summary_line()
        raise ItemFailed(f"{item.key}: {record['message']}\n{format_checks(gate.checks)}")
    record["status"] = "passed"
    record["message"] = ""
