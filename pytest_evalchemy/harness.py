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

from . import task_index
from .endpoint import redact_url

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
    # --evalchemy-concurrency auto: num_concurrent is the maximum and the endpoint's adaptive
    # limit decides how many are in flight (the requests, and so the scores, are the same).
    adaptive_concurrency: bool = False
    # What the lm-eval command shows for num_concurrent under auto: lm-eval has no adaptive
    # mode, and its maximum (num_concurrent above) at once would flood a shared server; the
    # number auto starts at, and once the item ran, the one it settled at.
    shown_concurrency: int | None = None
    max_retries: int = 3
    request_timeout: int = 300
    tokenizer: str | None = None  # a local tokenizer; None: vLLM's remote tokenizer endpoints
    remote_tokenizer: bool = True  # False with no local tokenizer: string prompts, generation only
    include_paths: tuple[Path, ...] = ()
    cache_prefix: str | None = None
    verify_certificate: bool = True  # False: --evalchemy-insecure
    ca_cert_path: str | None = None  # a CA bundle the server's certificate is checked against
    confirm_run_unsafe_code: bool = False  # lm-eval runs tasks marked `unsafe_code: true`

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
        # Only when set: an ordinary run's command stays what it was.
        if not self.verify_certificate:
            args["verify_certificate"] = False
        if self.ca_cert_path:
            args["ca_cert_path"] = self.ca_cert_path
        return args

    def lm_eval_model_args(self) -> dict[str, Any]:
        """``model_args`` as handed to lm-eval: its concurrent client (aiohttp) ignores
        ``ca_cert_path`` and takes ``verify_certificate`` as its ``ssl``, so the CA goes
        there as an SSL context (its sync client gets REQUESTS_CA_BUNDLE from the caller)."""
        args = self.model_args()
        if self.ca_cert_path and self.verify_certificate and self.num_concurrent > 1:
            import ssl

            args["verify_certificate"] = ssl.create_default_context(cafile=self.ca_cert_path)
        if self.adaptive_concurrency:
            args["adaptive_concurrency"] = True  # the project's model only; not in cli_command
        return args

    def cli_command(self, output_path: str | None = None) -> list[str]:
        """The equivalent ``lm-eval run`` command line."""
        cmd = ["lm-eval", "run", "--model", "local-completions", "--model_args"]
        # The URL lm-eval posts to may carry credentials; the command is shown and written.
        args = self.model_args()
        if self.adaptive_concurrency:
            from .concurrency import INITIAL

            args["num_concurrent"] = self.shown_concurrency or min(INITIAL, self.num_concurrent)
        cmd += [f"{k}={redact_url(v) if k == 'base_url' else v}" for k, v in args.items()]
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
        if self.confirm_run_unsafe_code:
            cmd.append("--confirm_run_unsafe_code")
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


def _quiet_env() -> None:
    # Progress bars would interleave with pytest's output; users can still turn them on.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def task_manager(include_paths: tuple[Path, ...], names: tuple[str, ...]) -> Any:
    """A TaskManager that knows ``names``, built once per process: the include paths alone
    when they suffice (~0 s), plus only the lm-eval task folders a public task needs (~0.1 s
    with the cached index of ``task_index``, where lm-eval's full index takes ~15 s)."""
    _quiet_env()
    try:
        return task_index.task_manager(names, include_paths)
    except task_index.UnknownTasks as exc:
        raise HarnessError(
            f"lm-eval does not know the task(s) {', '.join(exc.names)}; check the spelling "
            "(`lm-eval ls tasks` lists them) or add the folder of their YAMLs to include_paths"
        ) from None


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` without ``secrets``: a URL's ``user:pass@`` goes (the URL stays readable),
    anything else becomes ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "" if secret.endswith("@") else "***")
    return text


class _Redact(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg = clean
            record.args = ()
        return True


@contextmanager
def capture_log(
    path: Path, secret: str | None = None, level: str = "INFO", secrets: tuple[str, ...] = ()
) -> Iterator[None]:
    """Write lm-eval's log records (``level`` and up) to ``path`` while the block runs, with
    ``secret`` and ``secrets`` scrubbed."""
    logger = logging.getLogger("lm_eval")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    handler.addFilter(_Redact((*secrets, secret) if secret else secrets))
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

    # local-completions with vLLM's remote tokenizer called concurrently: the same requests
    # and scores (cli_command stays local-completions), without ~2 ms per string up front.
    from .completions_model import MODEL_NAME

    results = lm_eval.simple_evaluate(
        model=MODEL_NAME,
        model_args=request.lm_eval_model_args(),
        tasks=list(request.tasks),
        num_fewshot=request.num_fewshot,
        batch_size=request.batch_size,
        limit=request.limit,
        log_samples=request.log_samples,
        use_cache=request.cache_prefix,
        task_manager=tm,
        confirm_run_unsafe_code=request.confirm_run_unsafe_code,
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
