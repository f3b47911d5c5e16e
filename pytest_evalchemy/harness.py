"""Running lm-evaluation-harness in-process against a completions endpoint.

lm-eval is imported only when an item runs, so collecting items stays fast. One
``TaskManager`` is built per process and reused: building lm-eval's default index costs
~15 s, and ``simple_evaluate`` would build one per call if not handed ours.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# lm-eval's own defaults (evaluator.simple_evaluate), recorded in every result so a run can be
# reproduced with `lm-eval run --seed 0,1234,1234,1234`.
SEEDS = {
    "random_seed": 0,
    "numpy_random_seed": 1234,
    "torch_random_seed": 1234,
    "fewshot_random_seed": 1234,
}
NON_METRIC_KEYS = {"name", "alias", "sample_len", " "}


@dataclass(frozen=True)
class HarnessRequest:
    """Everything one lm-eval run of a test item needs."""

    tasks: tuple[str, ...]
    model: str
    base_url: str
    num_fewshot: int | None = None
    batch_size: int = 1
    limit: int | float | None = None
    log_samples: bool = False
    max_length: int = 2048
    num_concurrent: int = 1
    max_retries: int = 3
    request_timeout: int = 300
    tokenizer: str | None = None  # a local tokenizer; None: vLLM's remote tokenizer endpoints
    remote_tokenizer: bool = True  # False with no local tokenizer: string prompts, generation only
    include_paths: tuple[Path, ...] = ()
    cache_prefix: str | None = None

    def model_args(self) -> dict[str, Any]:
        """``model_args`` of lm-eval's ``local-completions`` model (no credentials: lm-eval
        reads the key from OPENAI_API_KEY, so it never lands in lm-eval's results)."""
        args: dict[str, Any] = {"model": self.model, "base_url": self.base_url}
        if self.tokenizer is not None:
            args |= {"tokenizer_backend": "huggingface", "tokenizer": self.tokenizer}
        elif self.remote_tokenizer:
            args["tokenizer_backend"] = "remote"
        else:
            args["tokenizer_backend"] = "none"
        # String prompts would shift the context by the server's BOS and corrupt loglikelihoods.
        args["tokenized_requests"] = args["tokenizer_backend"] != "none"
        args |= {
            "num_concurrent": self.num_concurrent,
            "max_retries": self.max_retries,
            "max_length": self.max_length,
            "timeout": self.request_timeout,
        }
        return args

    def cli_command(self, output_path: str | None = None) -> list[str]:
        """The equivalent ``lm-eval run`` command line."""
        cmd = ["lm-eval", "run", "--model", "local-completions", "--model_args"]
        cmd += [f"{k}={v}" for k, v in self.model_args().items()]
        cmd += ["--tasks", *self.tasks]
        if self.num_fewshot is not None:
            cmd += ["--num_fewshot", str(self.num_fewshot)]
        cmd += ["--batch_size", str(self.batch_size)]
        if self.limit is not None:
            cmd += ["--limit", str(self.limit)]
        for path in self.include_paths:
            cmd += ["--include_path", str(path)]
        if self.cache_prefix:
            cmd += ["--use_cache", self.cache_prefix]
        if output_path:
            cmd += ["--output_path", output_path]
            if self.log_samples:
                cmd.append("--log_samples")
        cmd += ["--seed", ",".join(str(SEEDS[k]) for k in SEEDS)]
        return cmd

    def cli_string(self, output_path: str | None = None) -> str:
        return shlex.join(self.cli_command(output_path))


class HarnessError(Exception):
    """lm-eval could not run the item; the message says why."""


_task_managers: dict[tuple[tuple[str, ...], bool], Any] = {}


def _quiet_env() -> None:
    # Progress bars would interleave with pytest's output; users can still turn them on.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def task_manager(include_paths: tuple[Path, ...], names: tuple[str, ...]) -> Any:
    """A TaskManager that knows ``names``: the include paths alone when they suffice (~0 s),
    lm-eval's full index only when a public task is asked for (~15 s, built once)."""
    _quiet_env()
    from lm_eval.tasks import TaskManager

    paths = tuple(str(p) for p in include_paths)
    for defaults in (False, True):
        key = (paths, defaults)
        if key not in _task_managers:
            _task_managers[key] = TaskManager(include_path=list(paths), include_defaults=defaults)
        tm = _task_managers[key]
        missing = [n for n in names if n not in tm.all_tasks]
        if not missing:
            return tm
    raise HarnessError(
        f"lm-eval does not know the task(s) {', '.join(missing)}; check the spelling "
        "(`lm-eval ls tasks` lists them) or add the folder of their YAMLs to include_paths"
    )


class _Redact(logging.Filter):
    def __init__(self, secret: str | None) -> None:
        super().__init__()
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secret and self.secret in record.getMessage():
            record.msg = record.getMessage().replace(self.secret, "***")
            record.args = ()
        return True


@contextmanager
def capture_log(path: Path, secret: str | None = None, level: str = "INFO") -> Iterator[None]:
    """Write lm-eval's log records (``level`` and up) to ``path`` while the block runs."""
    logger = logging.getLogger("lm_eval")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    handler.addFilter(_Redact(secret))
    old_level = logger.level
    logger.addHandler(handler)
    handler.setLevel(level)
    if logger.getEffectiveLevel() > handler.level:
        logger.setLevel(handler.level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


def run(request: HarnessRequest) -> dict[str, Any]:
    """Run lm-eval's ``simple_evaluate``; the returned results are plain JSON values."""
    tm = task_manager(request.include_paths, request.tasks)
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=request.model_args(),
        tasks=list(request.tasks),
        num_fewshot=request.num_fewshot,
        batch_size=request.batch_size,
        limit=request.limit,
        log_samples=request.log_samples,
        use_cache=request.cache_prefix,
        task_manager=tm,
        **SEEDS,
    )
    if results is None:
        raise HarnessError("lm-eval returned no results")
    # numpy floats and other objects become plain JSON values, the way lm-eval writes them.
    return json.loads(json.dumps(results, default=handle_non_serializable))


# ---------------------------------------------------------------- reading results


def metrics_of(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{lm_eval_task: {"acc,none": 0.75, "acc_stderr,none": 0.07, ...}}`` (groups included)."""
    out: dict[str, dict[str, Any]] = {}
    for section in ("results", "groups"):
        for task, values in (results.get(section) or {}).items():
            out.setdefault(task, {}).update(
                {k: v for k, v in values.items() if k not in NON_METRIC_KEYS}
            )
    return out


def expected_samples(original: int, limit: int | float | None) -> int:
    """How many documents lm-eval evaluates of a task with ``original`` ones (its own rule)."""
    if limit is None:
        return original
    n = math.ceil(original * limit) if limit < 1.0 else int(limit)
    return min(n, original)


def completeness_problem(results: dict[str, Any], limit: int | float | None) -> str | None:
    """Why these results cannot be trusted (no metrics, fewer samples than asked), or None."""
    n_samples = results.get("n-samples") or {}
    if not results.get("results") or not n_samples:
        return "lm-eval returned no results: nothing was evaluated"
    short = []
    for task, counts in sorted(n_samples.items()):
        want = expected_samples(int(counts.get("original", 0)), limit)
        got = int(counts.get("effective", 0))
        if got == 0 or got < want:
            short.append(f"{task}: {got} of {want} samples")
    if short:
        return "fewer samples evaluated than asked for (" + "; ".join(short) + ")"
    return None


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One lm-eval results document from the results of several items of a benchmark."""
    if not parts:
        return {}
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "samples":
                continue
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            elif key not in merged:
                merged[key] = value
    return merged
