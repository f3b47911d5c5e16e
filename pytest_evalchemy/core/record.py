"""The vocabulary of an item's record and of the run's summary: the lm-eval metric keys, the
values a record keeps, the settings that make two records comparable. Every module reads and
writes records through these names. Imports nothing else of the package but ``core``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypedDict

from .errors import UsageProblem

# The summary files of a run folder (``evalchemy_summary_<run id>.json``).
SUMMARY_GLOB = "evalchemy_summary_*.json"

# Record settings that change what a score means, with the value a record without them (an
# older run's) had.
LIKE_FOR_LIKE_DEFAULTS: dict[str, Any] = {
    "apply_chat_template": False,
    "system_instruction": None,
    "fewshot_as_multiturn": False,
    "chat_endpoint": False,
    "gen_kwargs": None,
    "reasoning": False,
    "think_end_token": None,
    "thinking_budget": None,
    # Token prompts started without the BOS before the setting existed.
    "add_bos_token": False,
}


# ---------------------------------------------------------------- lm-eval's metric keys


def as_float(value: Any) -> float | None:
    """A metric value as a number; None for what is not one (lm-eval writes "N/A" for a stderr
    it could not compute; booleans are not scores; NaN is no value)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def stderr_key(metric: str) -> str:
    """``acc,none`` -> ``acc_stderr,none``: where lm-eval keeps the metric's standard error."""
    name, _, flt = metric.partition(",")
    return f"{name}_stderr,{flt}"


def is_stderr(metric: str) -> bool:
    """``acc_stderr,none`` is the standard error of ``acc,none``, not a metric of its own."""
    return metric.partition(",")[0].endswith("_stderr")


# ---------------------------------------------------------------- statuses


class Status:
    """The statuses of an item record, in the order the summary's totals list them. Plain
    strings (a record is JSON and crosses xdist as JSON)."""

    PASSED: Final = "passed"
    FAILED: Final = "failed"  # a check missed (threshold, baseline, fewer samples)
    ERROR: Final = "error"  # lm-eval or the endpoint failed
    TIMEOUT: Final = "timeout"  # the item's timeout ran out
    CRASHED: Final = "crashed"  # its worker died
    INTERRUPTED: Final = "interrupted"  # the run was stopped
    PENDING: Final = "pending"  # selected, not started (a run that ended early: what is left)
    SKIPPED: Final = "skipped"
    RUNNING: Final = "running"  # in flight; never in a finished summary's totals


StatusName = Literal[
    "passed",
    "failed",
    "error",
    "timeout",
    "crashed",
    "interrupted",
    "pending",
    "skipped",
    "running",
]

# The totals' statuses, in order.
STATUSES: tuple[str, ...] = (
    Status.PASSED,
    Status.FAILED,
    Status.ERROR,
    Status.TIMEOUT,
    Status.CRASHED,
    Status.INTERRUPTED,
    Status.PENDING,
    Status.SKIPPED,
)
# The statuses of an item that did not pass (pytest counts each as failed), for verdicts and
# the errors log.
NOT_PASSED: tuple[str, ...] = (
    Status.FAILED,
    Status.ERROR,
    Status.TIMEOUT,
    Status.CRASHED,
    Status.INTERRUPTED,
)
# The statuses a resumed run keeps (the others run again).
FINISHED: tuple[str, ...] = (Status.PASSED, Status.FAILED)
# Not finished: still to run or running.
UNFINISHED: tuple[str, ...] = (Status.PENDING, Status.RUNNING)


def totals(tasks: Mapping[str, ItemRecord]) -> dict[str, int]:
    """Count of items per status."""
    counts = dict.fromkeys(STATUSES, 0)
    for record in tasks.values():
        counts[record["status"]] = counts.get(record["status"], 0) + 1
    return counts


# ---------------------------------------------------------------- the record and the summary


class IntervalRecord(TypedDict):
    """A metric's confidence interval as the record keeps it: the JSON form of
    ``judge.statistics.Interval`` (its ``to_dict``)."""

    low: float
    high: float
    method: str  # wilson, normal, bootstrap
    confidence: float


# The kinds of broken answers an item's ``validity`` counts, in the order reports show them:
# generation answers that ended at max_tokens (finish_reason "length"), reasoning answers whose
# thinking never closed, prompts cut to fit the context.
VALIDITY_KINDS: tuple[str, ...] = ("length", "unclosed_thinking", "cut_prompts")


class ValidityShare(TypedDict, total=False):
    """One kind of an item's ``validity``: ``count`` of ``of`` were broken, ``share`` the
    fraction. Length only: ``max_tokens``, the largest max_tokens the answers were asked with,
    and ``replayed``, the answers lm-eval took from its request cache (no finish reason: in
    neither ``count`` nor ``of``)."""

    count: int
    of: int
    share: float
    max_tokens: int
    replayed: int


class ItemRecord(TypedDict, total=False):
    """One item of the summary's ``tasks``: ``base_record`` builds it, the run fills it in place
    (so that a timeout still leaves what was known), the reporter completes it."""

    benchmark: str
    task: str  # the item key's task part
    lm_eval_tasks: list[str]
    description: str | None
    status: StatusName
    duration_s: float
    message: str | None
    settings: dict[str, Any]  # what of the request changes or explains a score
    endpoint: str  # redacted
    item_dir: str  # relative to the run folder
    request_cache: str  # the unreadable request cache set aside, when there was one
    lm_eval_command: str  # the equivalent lm-eval command line, credentials left out
    requests: dict[str, Any]  # done, total, per_s, concurrency (and "adaptive")
    context: dict[str, Any]  # prompts cut to fit the model's context (``ContextCheck``)
    thinking: dict[str, Any]  # reasoning: responses with thinking, its length
    # The shares of broken answers, per kind of VALIDITY_KINDS that applies to the item.
    validity: dict[str, ValidityShare]
    # {lm_eval_task: {"acc,none": 0.75, "acc_stderr,none": 0.07}}
    metrics: dict[str, dict[str, Any]]
    n_samples: dict[str, dict[str, int]]
    versions: dict[str, Any]  # lm-eval's task versions
    n_shot: dict[str, Any]
    higher_is_better: dict[str, dict[str, bool]]  # lm-eval's direction of each metric
    intervals: dict[str, dict[str, IntervalRecord]]
    checks: list[dict[str, Any]]  # ``Check.to_dict``: thresholds and the baseline's
    gate_notes: list[str]  # why a baseline comparison is not like for like
    nodeid: str  # the test of an ``evalchemy.run()`` record
    resumed: bool  # kept from the run being resumed


class CanaryRecord(TypedDict):
    """The endpoint check's canary: one fixed text scored with prompt logprobs, so that two
    runs naming the same model can tell whether the same weights answered them
    (``judge.canary``)."""

    tokens: int  # prompt logprobs summed (the first token's null left out)
    logprob_sum: float
    text_sha256: str  # of the canary text: a changed text is not taken for other weights


class EndpointCheckRecord(TypedDict, total=False):
    """The summary's ``endpoint_check``: what the endpoint check found
    (``run.chat_check.endpoint_findings``)."""

    chat_template: bool | None
    chat_endpoint: str | None  # redacted
    chat_reachable: bool | None
    completions: bool
    reasoning: bool
    reasoning_how: str | None
    # None: the check sent no logprob request (a chat-only server), or the server did not score it
    canary: CanaryRecord | None
    # The tokenizer's facts and what the run's prompts start with (run.tokenizer_check.findings)
    tokenizer: dict[str, Any]


class Summary(TypedDict, total=False):
    """``evalchemy_summary_<run id>.json`` (``configs/summary.schema.json`` describes it;
    ``report.summary.assemble_summary`` builds it)."""

    format_version: int
    run_id: str
    endpoint: str | None  # redacted, as every URL of the summary
    model: str | None
    endpoints: list[str]
    router: str
    replicas: list[str]
    config: dict[str, str | None]  # path, sha256
    config_warnings: list[str]
    settings: dict[str, Any]
    seeds: dict[str, int]
    endpoint_check: EndpointCheckRecord
    started_at: str
    finished_at: str | None
    exit_status: int | None
    versions: dict[str, str]
    totals: dict[str, int]
    tasks: dict[str, ItemRecord]
    gate: dict[str, Any]
    identity: dict[str, Any]
    resumes: list[dict[str, Any]]


# The summary's format: raised when a field changes meaning or goes away (adding one does
# not), so that tools reading summaries can tell.
FORMAT_VERSION = 1


def load_summary(path: Path, *, label: str = "", shown: str | None = None) -> Summary:
    """Read a summary file: ``UsageProblem`` (prefixed ``label``, the file ``shown``, by default
    its quoted path) when it cannot be read or is no summary. A missing file raises
    ``FileNotFoundError``: each caller says what to pass instead."""
    shown = repr(str(path)) if shown is None else shown
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageProblem(f"{label}cannot read {shown}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise UsageProblem(f"{label}{shown} is not an evalchemy summary (no 'tasks')")
    return data


# ---------------------------------------------------------------- metric rows


def split_metric(metric: str) -> tuple[str, str]:
    """``acc,none`` -> ``("acc", "none")``: lm-eval's metric name and filter."""
    name, _, flt = metric.partition(",")
    return name, flt


def metric_label(record: ItemRecord, lm_task: str, metric: str) -> str:
    """``acc,none``, or ``subtask:acc,none`` for a group's subtask."""
    return metric if lm_task == record.get("task") else f"{lm_task}:{metric}"


@dataclass(frozen=True)
class MetricEntry:
    """One metric of an item, with its standard error when lm-eval computed one."""

    lm_task: str
    metric: str  # lm-eval's key, "acc,none"
    label: str  # "acc,none", or "subtask:acc,none" for a group's subtask
    value: float | None
    stderr: float | None
    raw: Any = None  # the value as lm-eval wrote it (a table shows what is there)
    raw_stderr: Any = None


def metric_entries(record: ItemRecord) -> list[MetricEntry]:
    """The item's metrics in lm-eval's order, stderrs beside their metric rather than as rows:
    the rows of the score table, the Markdown and the HTML reports."""
    out = []
    for lm_task, values in (record.get("metrics") or {}).items():
        for metric, raw in values.items():
            if is_stderr(metric):
                continue
            raw_stderr = values.get(stderr_key(metric))
            out.append(
                MetricEntry(
                    lm_task,
                    metric,
                    metric_label(record, lm_task, metric),
                    as_float(raw),
                    as_float(raw_stderr),
                    raw,
                    raw_stderr,
                )
            )
    return out
