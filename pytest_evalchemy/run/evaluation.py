"""One test item's evaluation: build the lm-eval request from the config and the run's
settings, run it, keep its files, and judge the outcome. Imports no pytest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.config import PlannedItem, Threshold
from ..core.record import ItemRecord, Status
from ..core.redact import redact_logging, scrub, secrets_of
from ..core.results import RunPaths, atomic_write_json, atomic_write_text, child_path, inside
from ..core.samples import samples_file_name
from ..judge.canary import ServedRun
from ..judge.gating import GateSettings, NotLikeForLikeWarning, format_checks, gate_item
from ..judge.per_sample import run_intervals
from .chat_settings import ChatOptions, ItemChat, generation_only, item_chat
from .concurrency import AUTO, DEFAULT_MAX, AdaptiveLimit, LimitRegistry
from .concurrency import INITIAL as INITIAL_CONCURRENCY
from .context_check import ContextCheck, ContextTooLong, ContextWarning
from .endpoint import DEFAULT_MAX_LENGTH, EndpointInfo, redact_url, split_credentials
from .lmeval import harness
from .lmeval.progress import RequestProgress, track
from .lmeval.request_cache import RequestCacheWarning, set_aside_unreadable
from .patience import EndpointGone, ItemOutage, OutageRegistry, item_deadline
from .tokenizer_check import resolve_add_bos
from .validity import validity_of

# lm-eval's own per-request timeout; an item timeout shorter than that lowers it below itself.
DEFAULT_REQUEST_TIMEOUT = 300
# lm-eval's `lm-eval run --config FILE` for an item whose tasks need several include paths:
# its --include_path takes one folder (repeated, the last wins; a joined list is one name).
LM_EVAL_CONFIG = "lm_eval_config.yaml"
# An item's time and requests so far, for the controller when the item never reports (Ctrl-C,
# SIGTERM; under xdist too, where the record in its report is lost with the report).
PROGRESS_FILE = "progress.json"
# How many of the lm-eval log's last warnings a failed item's report shows.
LOG_TAIL_LINES = 8
# The datasets library's words for a data file it cannot find.
_MISSING_DATA = re.compile(r"Unable to find '([^']+)'")


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
    outage_timeout: float = 0.0  # seconds a server away during an item is waited for
    strict_context: bool = False  # prompts cut to fit the context fail the item
    # Log every item's samples (--evalchemy-log-samples, or a baseline to pair with).
    log_samples: bool = False
    chat: ChatOptions = field(default_factory=ChatOptions)
    add_bos_token: str | None = None  # "true", "false", "auto"; None: each task's (auto)
    # The process's outage windows and adaptive limits (one per endpoint), created once per
    # process with the settings and shared by the items they run: a server that is gone is
    # waited for once per process, and the second item starts where the first settled.
    outages: OutageRegistry = field(default_factory=OutageRegistry, compare=False, repr=False)
    limits: LimitRegistry = field(default_factory=LimitRegistry, compare=False, repr=False)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be written: the API key and the endpoint URLs' credentials."""
        return secrets_of((self.endpoint.url, self.endpoint.chat_url), self.api_key)


class ItemFailed(Exception):
    """The item ran but its result is not acceptable (message is shown instead of a traceback)."""


def item_timeout(item: PlannedItem, settings_default: float | None) -> float | None:
    """The item's wall-clock limit: the task's ``timeout``, else the run's default."""
    return item.task.timeout if item.task.timeout is not None else settings_default


def served_run(settings: RunSettings) -> ServedRun:
    """This run's model and canary, as the baseline check compares them with the baseline's."""
    endpoint = settings.endpoint
    canary = endpoint.canary.to_record() if endpoint.canary else None
    return ServedRun(settings.paths.run_id, endpoint.model, canary)


def chat_of(item: PlannedItem, settings: RunSettings) -> ItemChat:
    """The item's chat and reasoning settings on the run's endpoint."""
    return item_chat(
        item.task,
        settings.chat,
        chat_url=settings.endpoint.chat_url,
        reasoning_detected=settings.endpoint.reasoning,
        include_paths=settings.include_paths,
    )


def chat_note(item: PlannedItem, settings: RunSettings) -> str:
    """The item's chat and reasoning settings in words (empty for a plain item), for the
    dry run."""
    chat = chat_of(item, settings)
    parts = []
    if chat.chat_url is not None:
        parts.append("generation through /v1/chat/completions")
    elif chat.apply_chat_template is not False:
        name = chat.apply_chat_template
        parts.append(
            "the server's chat template"
            + (f" {name!r}" if isinstance(name, str) else "")
            + " on /v1/completions"
        )
    if chat.templated:
        multiturn = chat.fewshot_as_multiturn is not False
        parts.append("few-shot as turns" if multiturn else "few-shot in one turn")
    if chat.system_instruction is not None:
        parts.append(f"system instruction {chat.system_instruction!r}")
    generation = generation_only(item.task, settings.include_paths)
    if not generation:
        pass  # reasoning changes nothing for loglikelihood requests
    elif chat.reasoning_setting == "auto":
        parts.append("reasoning: auto (the endpoint check decides; shown as off)")
    elif chat.reasoning:
        parts.append(
            f"reasoning: no stop strings sent, thinking up to {chat.think_end_token!r} taken "
            f"off, thinking budget {chat.thinking_budget} tokens"
        )
    if not chat.templated and (chat.reasoning_setting == "auto" or not generation):
        return ""
    return "; ".join(parts)


def build_request(item: PlannedItem, settings: RunSettings) -> harness.ItemRequest:
    """The lm-eval request of ``item`` under ``settings``."""
    task = item.task
    chat = chat_of(item, settings)
    timeout = item_timeout(item, settings.default_timeout)
    request_timeout = DEFAULT_REQUEST_TIMEOUT
    if timeout is not None:
        request_timeout = max(1, min(DEFAULT_REQUEST_TIMEOUT, int(timeout * 0.8)))
    max_length = settings.max_length or settings.endpoint.max_model_len or DEFAULT_MAX_LENGTH
    lm_eval_config = None
    if len(settings.include_paths) > 1:
        lm_eval_config = settings.paths.item_dir(item.benchmark, task.key) / LM_EVAL_CONFIG
    # The adaptive limit lives in the project's completions model; generation through a chat
    # endpoint (lm-eval's chat model) keeps a fixed concurrency: auto starts it where the
    # adaptive limit starts.
    auto = settings.concurrency == AUTO
    adaptive = auto and chat.chat_url is None
    if adaptive:
        num_concurrent = settings.max_concurrency
    else:
        num_concurrent = INITIAL_CONCURRENCY if auto else int(settings.concurrency)
    return harness.ItemRequest(
        tasks=task.tasks,
        model=settings.endpoint.model,
        base_url=settings.endpoint.url,
        num_fewshot=task.num_fewshot,
        batch_size=settings.batch_size or task.batch_size or 1,
        limit=settings.limit if settings.limit is not None else task.limit,
        log_samples=task.log_samples or settings.log_samples,
        max_length=max_length,
        num_concurrent=num_concurrent,
        adaptive_concurrency=adaptive,
        max_retries=settings.max_retries,
        request_timeout=request_timeout,
        tokenizer=settings.tokenizer,
        remote_tokenizer=settings.endpoint.remote_tokenizer,
        include_paths=settings.include_paths,
        lm_eval_config=lm_eval_config,
        cache_prefix=cache_prefix(item, settings, max_length, chat),
        verify_certificate=settings.verify is not False,
        ca_cert_path=settings.verify if isinstance(settings.verify, str) else None,
        confirm_run_unsafe_code=settings.allow_unsafe_code,
        outage_timeout=settings.outage_timeout,
        strict_context=settings.strict_context,
        chat_url=chat.chat_url,
        apply_chat_template=chat.apply_chat_template,
        system_instruction=chat.system_instruction,
        fewshot_as_multiturn=chat.fewshot_as_multiturn,
        gen_kwargs=task.gen_kwargs,
        reasoning=chat.reasoning,
        think_end_token=chat.think_end_token,
        thinking_budget=chat.thinking_budget,
        add_bos_token=add_bos_of(item, settings, chat),
    )


def add_bos_setting(item: PlannedItem, settings: RunSettings) -> str:
    """The item's add_bos_token as asked: the run-wide option, else the task key, else auto."""
    return settings.add_bos_token or item.task.add_bos_token or "auto"


def add_bos_of(item: PlannedItem, settings: RunSettings, chat: ItemChat) -> bool | None:
    """Whether the item's prompts start with the BOS (``resolve_add_bos``)."""
    endpoint = settings.endpoint
    tokenized = chat.chat_url is None and (
        settings.tokenizer is not None or endpoint.remote_tokenizer
    )
    return resolve_add_bos(
        add_bos_setting(item, settings),
        endpoint.tokenizer,
        templated=chat.templated,
        tokenized=tokenized,
    )


def cache_prefix(
    item: PlannedItem, settings: RunSettings, max_length: int, chat: ItemChat | None = None
) -> str | None:
    """Where the item's lm-eval response cache lives. lm-eval keys a response by the request
    alone, not by the model: the folder is namespaced by the run (a new checkpoint served under
    the same name must never get the old one's answers; a resumed run keeps its id) and by what
    changes the answers (model, context length, tokenizer, lm-eval version). Each item has its
    own file, so parallel workers never share one."""
    if settings.cache_root is None:
        return None
    from importlib import metadata

    tokenizer = settings.tokenizer or ("remote" if settings.endpoint.remote_tokenizer else "none")
    parts: list[Any] = [
        settings.paths.run_id,
        settings.endpoint.model,
        max_length,
        tokenizer,
        metadata.version("lm_eval"),
    ]
    chat = chat or chat_of(item, settings)
    add_bos = add_bos_of(item, settings, chat)
    if add_bos:
        parts.append({"add_bos_token": True})  # other prompts: other answers
    if chat.templated or chat.reasoning:
        # lm-eval's cache key holds the prompt, not how the answer was asked for (a chat
        # endpoint, no stop strings) or read (the thinking): a change must not reuse answers.
        parts.append(
            [chat.chat_url, chat.apply_chat_template, chat.reasoning, chat.thinking_budget]
        )
    key = json.dumps(parts)
    namespace = hashlib.sha256(key.encode()).hexdigest()[:16]
    return str(settings.cache_root / namespace / item.benchmark / item.task.key / "requests")


def scrub_results(results: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """``results`` without ``secrets``: lm-eval copies ``model_args`` (the URL it posts to,
    credentials included) into its results."""
    if not secrets:
        return results
    text = json.dumps(results, default=str)
    clean = scrub(text, tuple(json.dumps(s)[1:-1] for s in secrets))
    return results if clean == text else json.loads(clean)


def data_path_hint(exc: BaseException, include_paths: tuple[Path, ...]) -> str | None:
    """Why a task's data file was not found, when it is the usual reason: lm-eval (datasets)
    reads a YAML's relative ``data_files`` from the working directory, not the YAML's folder."""
    match = _MISSING_DATA.search(str(exc)) if isinstance(exc, FileNotFoundError) else None
    if match is None:
        return None
    cwd = Path.cwd()
    try:
        relative = Path(match.group(1)).relative_to(cwd)
    except ValueError:
        return None  # an absolute path that is not there: the message says all there is
    fix = (
        "give data_files as an absolute path, or load the data with `custom_dataset: !function "
        "module.function` (resolved next to the YAML, as the plugin's benchmarks/ do)"
    )
    for root in include_paths:
        for yaml_path in sorted(Path(root).rglob("*.yaml")):
            candidate = yaml_path.parent / relative
            if candidate.is_file():
                return (
                    f"lm-eval reads a task's data_files from the working directory ({cwd}), not "
                    f"from the task's folder; {candidate} exists next to {yaml_path}: {fix}"
                )
    return f"lm-eval reads a task's data_files from the working directory ({cwd}): {fix}"


def describe_error(exc: BaseException, attempts: int, include_paths: tuple[Path, ...] = ()) -> str:
    """What an exception out of lm-eval means for the user; lm-eval re-raises the last error
    of a request once its ``attempts`` are used up."""
    import aiohttp  # lm-eval's client with --evalchemy-concurrency > 1
    import requests  # its client otherwise

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, EndpointGone):
        return str(exc)  # says how long the server was away, and the last failure
    hint = data_path_hint(exc, include_paths)
    if hint:
        return f"{text}. {hint}"
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


def _write_progress(item_dir: Path, record: dict[str, Any]) -> None:
    # Only a finer summary of an interrupted item depends on it: never fail the item for it.
    with contextlib.suppress(OSError):
        atomic_write_json(
            item_dir / PROGRESS_FILE,
            {"duration_s": record["duration_s"], "requests": record["requests"]},
        )


def read_progress(item_dir: Path) -> dict[str, Any]:
    """What ``run_item`` left in ``item_dir`` about its last run: ``duration_s``, ``requests``."""
    try:
        data = json.loads((item_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def log_warnings(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last warnings and errors of an item's lm-eval log (its INFO records and progress
    bars stay in the file), each shortened to one line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    levels = (" WARNING [", " ERROR [", " CRITICAL [")
    picked = [line for line in text.splitlines() if any(level in line for level in levels)]
    return [line if len(line) <= 300 else line[:297] + "..." for line in picked[-lines:]]


def _write_item_files(item_dir: Path, results: dict[str, Any], output_path: str | None) -> None:
    samples = results.pop("samples", None) or {}
    atomic_write_json(item_dir / "results.json", results)
    for task, rows in samples.items():
        text = "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows)
        # The task name comes from a YAML: the file stays in the item's folder whatever it is.
        atomic_write_text(child_path(item_dir, samples_file_name(task)), text)
    if output_path:
        # The seed's per-task output_path gets a copy, relative to where the run started. The
        # config check refused a path that leads out of it; a link made since is refused here.
        target = Path(output_path)
        if not inside(Path.cwd(), target):
            raise ValueError(
                f"output_path {output_path!r} leads out of the working directory {Path.cwd()} "
                f"(to {target.resolve()}): no copy written"
            )
        target.mkdir(parents=True, exist_ok=True)
        for path in item_dir.iterdir():
            if path.suffix in (".json", ".jsonl", ".log"):
                copy = child_path(target, path.name)
                copy.unlink(missing_ok=True)  # a link left there would take the copy elsewhere
                shutil.copy2(path, copy)


def base_record(
    item: PlannedItem,
    settings: RunSettings | None,
    request: harness.ItemRequest | None = None,
) -> ItemRecord:
    """The summary entry of an item before it has run."""
    task = item.task
    record: ItemRecord = {
        "benchmark": item.benchmark,
        "task": task.key,
        "lm_eval_tasks": list(task.tasks),
        "description": task.description,
        "status": Status.PENDING,
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
        record["settings"] = request_settings(request or build_request(item, settings))
        record["endpoint"] = redact_url(settings.endpoint.url)
        record["item_dir"] = str(
            settings.paths.item_dir(item.benchmark, task.key).relative_to(settings.paths.root)
        )
    return record


def request_settings(request: harness.ItemRequest) -> dict[str, Any]:
    """The record's ``settings``: what of the request changes or explains a score."""
    return {
        "num_fewshot": request.num_fewshot,
        "limit": request.limit,
        "batch_size": request.batch_size,
        "max_length": request.max_length,
        "num_concurrent": AUTO if request.adaptive_concurrency else request.num_concurrent,
        **({"max_concurrency": request.num_concurrent} if request.adaptive_concurrency else {}),
        # Chat and reasoning: a changed one makes a baseline comparison not like for like.
        "apply_chat_template": request.apply_chat_template or request.chat_url is not None,
        "system_instruction": request.system_instruction,
        "fewshot_as_multiturn": request.multiturn,
        "chat_endpoint": request.chat_url is not None,
        "gen_kwargs": dict(request.gen_kwargs) or None,
        "reasoning": request.reasoning,
        "think_end_token": request.think_end_token if request.reasoning else None,
        "thinking_budget": request.thinking_budget if request.reasoning else None,
        # Another BOS is another prompt: a changed one is not like for like either. Left out
        # where the plugin builds no token prompts (the chat endpoint, no tokenizer).
        **({} if request.add_bos_token is None else {"add_bos_token": request.add_bos_token}),
    }


def _set_aside_unreadable_cache(
    item: PlannedItem,
    request: harness.ItemRequest,
    record: dict[str, Any],
    item_log: logging.Handler,
) -> None:
    """A request cache that cannot be read is moved aside before lm-eval opens it (it would
    fail the item, and every resume of it): the item asks again, and the item's log, the
    record and pytest's warnings summary say which file it was."""
    note = set_aside_unreadable(request.cache_prefix) if request.cache_prefix else None
    if note is None:
        return
    record["request_cache"] = note
    item_log.handle(
        logging.LogRecord(
            RequestCacheWarning.__module__, logging.WARNING, __file__, 0, note, None, None
        )
    )
    warnings.warn(RequestCacheWarning(f"{item.key}: {note}"), stacklevel=3)


def run_item(
    item: PlannedItem,
    settings: RunSettings,
    record: dict[str, Any],
    adjust: Callable[[harness.ItemRequest], harness.ItemRequest] | None = None,
    request: harness.ItemRequest | None = None,
) -> None:
    """Run ``item`` and fill ``record`` in place (so a timeout or an interrupt that ends the
    run midway still leaves what was known). Raises ``ItemFailed`` when the result is not
    acceptable and lets lm-eval's own errors through. ``adjust`` may change the request (the
    ``pytest_evalchemy_item_request`` hook); ``request`` is ``build_request``'s, when the
    caller built it already (for ``base_record``)."""
    request = request or build_request(item, settings)
    if adjust is not None:
        request = adjust(request)
        # The record says what ran, not what the config asked for.
        record["settings"] = request_settings(request)
    item_dir = settings.paths.item_dir(item.benchmark, item.task.key)
    item_dir.mkdir(parents=True, exist_ok=True)
    (item_dir / PROGRESS_FILE).unlink(missing_ok=True)  # an earlier run's (resume)
    if request.lm_eval_config is not None:
        # What lm_eval_command reads: every include path, in the order the run used.
        atomic_write_text(request.lm_eval_config, request.lm_eval_config_text())
    record["status"] = Status.RUNNING
    record["lm_eval_command"] = request.cli_string()
    start = time.monotonic()
    limit: AdaptiveLimit | None = None
    if request.adaptive_concurrency:
        # The model's key: the URL it posts to, without credentials.
        limit = settings.limits.get(split_credentials(request.base_url)[0], request.num_concurrent)
    before = limit.item_start() if limit else {}
    progress = RequestProgress(item.key, concurrency=lambda: limit.limit if limit else None)
    context = ContextCheck()
    # Every log handler of the process, pytest's included, scrubs the secrets from here on.
    redact_logging(settings.secrets)
    try:
        with (
            harness.capture_log(
                item_dir / "lm_eval.log", level=settings.log_level, secrets=settings.secrets
            ) as item_log,
            track(progress),
        ):
            _set_aside_unreadable_cache(item, request, record, item_log)
            # One window per endpoint in this process, shared by its items: a server that is
            # away is waited for once, not once per request or per item; no wait goes past the
            # item's own deadline.
            outage = ItemOutage(
                settings.outages.get(request.base_url, request.outage_timeout),
                item_deadline(item_timeout(item, settings.default_timeout), start),
            )
            facts = settings.endpoint.tokenizer
            policy = request.model_policy(
                outage,
                limit=limit,
                context=context,
                api_key=settings.api_key,
                bos_id=facts.bos_id if facts is not None else None,
            )
            outcome = harness.evaluate(request, policy)
    except ContextTooLong as exc:
        record["status"] = Status.FAILED
        record["message"] = f"{exc} (--evalchemy-strict-context)"
        raise ItemFailed(f"{item.key}: {record['message']}") from None
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
        if context.found:
            record["context"] = context.to_dict()
        _write_progress(item_dir, record)
    if context.found:
        warnings.warn(ContextWarning(f"{item.key}: {context.message()}"), stacklevel=2)
    results = scrub_results(outcome.results, settings.secrets)
    if outcome.thinking is not None:
        record["thinking"] = scrub_results(outcome.thinking, settings.secrets)
    record["validity"] = validity_of(outcome.ends, outcome.thinking, context, results)
    record["metrics"] = harness.metrics_of(results)
    record["n_samples"] = results.get("n-samples", {})
    record["versions"] = results.get("versions", {})
    record["n_shot"] = results.get("n-shot", {})
    # lm-eval's direction of each metric: a perplexity "drops" when it rises.
    record["higher_is_better"] = results.get("higher_is_better", {})
    samples = results.get("samples") or {}
    intervals = run_intervals(record["metrics"], results, samples, settings.gate.confidence)
    record["intervals"] = {
        task: {metric: iv.to_dict() for metric, iv in by_metric.items()}
        for task, by_metric in intervals.items()
    }
    _write_item_files(item_dir, results, item.task.output_path)
    problem = harness.completeness_problem(results, request.limit)
    if problem:
        record["status"] = Status.FAILED
        record["message"] = problem
        raise ItemFailed(f"{item.key}: {problem}")
    gate = gate_item(
        item, record, settings.extra_thresholds, settings.gate, samples, served_run(settings)
    )
    record["checks"] = [c.to_dict() for c in gate.checks]
    if gate.notes:
        record["gate_notes"] = gate.notes
    for text in gate.warnings:
        warnings.warn(NotLikeForLikeWarning(text), stacklevel=2)
    if gate.rejected:
        # Broken answers fail the item like a missed threshold: its score is not the model's.
        record["status"] = Status.FAILED
        record["message"] = gate.failure_message()
        table = f"\n{format_checks(gate.checks)}" if gate.checks else ""
        raise ItemFailed(f"{item.key}: {record['message']}{table}")
    record["status"] = Status.PASSED
    record["message"] = ""
