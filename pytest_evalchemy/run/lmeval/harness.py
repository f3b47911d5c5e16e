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

from ...core.redact import Redactor
from ..concurrency import AdaptiveLimit
from ..context_check import ContextCheck
from ..endpoint import redact_url
from ..patience import ItemOutage, reported
from ..reasoning import DEFAULT_THINK_END, DEFAULT_THINKING_BUDGET
from . import private, task_index
from .policy import ModelPolicy, Reasoning
from .switches import quiet_libraries
from .template_cache import install as compile_templates_once

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
class ItemRequest:
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
    # With several include paths the command reads them from this file (`lm-eval run --config`).
    lm_eval_config: Path | None = None
    cache_prefix: str | None = None
    verify_certificate: bool = True  # False: --evalchemy-insecure
    ca_cert_path: str | None = None  # a CA bundle the server's certificate is checked against
    confirm_run_unsafe_code: bool = False  # lm-eval runs tasks marked `unsafe_code: true`
    # The project's model, not lm-eval's model_args: a server away is waited for this long.
    outage_timeout: float = 0.0
    strict_context: bool = False  # prompts cut to fit the context fail the item
    # Chat and reasoning (lm-eval's meanings). chat_url: generation through
    # /v1/chat/completions (local-chat-completions), which implies the chat template.
    chat_url: str | None = None
    apply_chat_template: bool | str = False  # a string names one of the server's templates
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # None: lm-eval's default (on with a template)
    gen_kwargs: tuple[tuple[str, Any], ...] = ()
    reasoning: bool = False
    think_end_token: str = DEFAULT_THINK_END
    thinking_budget: int = DEFAULT_THINKING_BUDGET
    # Whether every prompt starts with the BOS (lm-eval's add_bos_token, which the command
    # shows); None: the plugin builds no token prompts (chat endpoint, no tokenizer) or the
    # tokenizer is not known yet (the dry run), and the command leaves it out.
    add_bos_token: bool | None = None

    @property
    def chat_templated(self) -> bool:
        return self.chat_url is not None or self.apply_chat_template is not False

    @property
    def multiturn(self) -> bool:
        """lm-eval's fewshot_as_multiturn as it will run."""
        if self.fewshot_as_multiturn is None:
            return self.chat_templated
        return self.fewshot_as_multiturn and self.chat_templated

    def model_args(self) -> dict[str, Any]:
        """``model_args`` of lm-eval's ``local-completions`` model (no credentials: lm-eval
        reads the key from OPENAI_API_KEY, so it never lands in lm-eval's results)."""
        if self.chat_url is not None:
            return self._chat_model_args()
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
        if self.add_bos_token is not None and args["tokenized_requests"]:
            args["add_bos_token"] = self.add_bos_token
        return args

    def cli_model_args(self) -> dict[str, Any]:
        """``model_args`` of the equivalent command. lm-eval renders a chat template on the
        completions endpoint only with a local tokenizer (with the remote one it hands the
        message list on): the command names the model's tokenizer, which is what the plugin's
        rendering of the server's template equals. Likewise for a BOS: lm-eval's remote
        tokenizer never adds one, its hf tokenizer does with ``add_bos_token=True``."""
        args = self.model_args()
        local_needed = self.apply_chat_template or self.add_bos_token
        if self.chat_url is None and local_needed and self.tokenizer is None:
            args["tokenizer_backend"] = "huggingface"
            args = {**dict(list(args.items())[:3]), "tokenizer": self.model, **args}
        return args

    def _chat_model_args(self) -> dict[str, Any]:
        """``local-chat-completions``: no tokenizer (the server renders the messages)."""
        args: dict[str, Any] = {
            "model": self.model,
            "base_url": self.chat_url,
            "num_concurrent": self.num_concurrent,
            "max_retries": self.max_retries,
            "timeout": self.request_timeout,
        }
        if self.reasoning:
            # The nearest lm-eval has: it drops the thinking, but still sends the stop strings.
            args["think_end_token"] = self.think_end_token
        if not self.verify_certificate:
            args["verify_certificate"] = False
        if self.ca_cert_path:
            args["ca_cert_path"] = self.ca_cert_path
        return args

    def lm_eval_model_args(self) -> dict[str, Any]:
        """``model_args`` as handed to lm-eval's model. Both its clients ignore
        ``ca_cert_path`` and pass ``verify_certificate`` on: the concurrent one (aiohttp) as
        its ``ssl``, so the CA goes there as an SSL context; the sync one (requests) as its
        ``verify``, which takes the bundle's path."""
        args = self.model_args()
        if self.ca_cert_path and self.verify_certificate:
            if self.num_concurrent > 1:
                import ssl

                args["verify_certificate"] = ssl.create_default_context(cafile=self.ca_cert_path)
            else:
                args["verify_certificate"] = self.ca_cert_path
        args.pop("think_end_token", None)  # the filter takes the thinking off, not lm-eval
        args.pop("add_bos_token", None)  # the plugin's model adds the BOS (ModelPolicy)
        return args

    def model_policy(
        self,
        outage: ItemOutage,
        *,
        limit: AdaptiveLimit | None = None,
        context: ContextCheck | None = None,
        api_key: str | None = None,
        bos_id: int | None = None,
    ) -> ModelPolicy:
        """The policy of this request's model: ``outage`` and ``limit`` come from the caller's
        per-process registries, ``context`` receives the counts of prompts cut to fit,
        ``bos_id`` is the endpoint check's id of the tokenizer's BOS."""
        context = context or ContextCheck()
        context.strict = self.strict_context
        context.max_length = self.max_length
        chat_template = self.apply_chat_template if self.chat_url is None else False
        return ModelPolicy(
            outage=outage,
            context=context,
            limit=limit if self.adaptive_concurrency else None,
            reasoning=Reasoning(self.thinking_budget, self.think_end_token)
            if self.reasoning
            else None,
            chat_template=chat_template if isinstance(chat_template, str) else None,
            api_key=api_key,
            add_bos=self.chat_url is None and self.add_bos_token is True,
            bos_id=bos_id,
        )

    def lm_eval_chat_args(self) -> dict[str, Any]:
        """``simple_evaluate``'s chat arguments."""
        return {
            "apply_chat_template": self.apply_chat_template or self.chat_url is not None,
            "system_instruction": self.system_instruction,
            "fewshot_as_multiturn": self.multiturn,
            "gen_kwargs": dict(self.gen_kwargs) or None,
        }

    def cli_command(self) -> list[str]:
        """The equivalent ``lm-eval run`` command line."""
        model = "local-chat-completions" if self.chat_url is not None else "local-completions"
        cmd = ["lm-eval", "run", "--model", model, "--model_args"]
        # The URL lm-eval posts to may carry credentials; the command is shown and written.
        args = self.cli_model_args()
        if self.adaptive_concurrency:
            from ..concurrency import INITIAL

            args["num_concurrent"] = self.shown_concurrency or min(INITIAL, self.num_concurrent)
        cmd += [f"{k}={redact_url(v) if k == 'base_url' else v}" for k, v in args.items()]
        cmd += ["--tasks", *self.tasks]
        if self.num_fewshot is not None:
            cmd += ["--num_fewshot", str(self.num_fewshot)]
        cmd += ["--batch_size", str(self.batch_size)]
        if self.limit is not None:
            cmd += ["--limit", str(self.limit)]
        if self.lm_eval_config is not None and len(self.include_paths) > 1:
            cmd += ["--config", str(self.lm_eval_config)]
        else:
            cmd += [a for path in self.include_paths for a in ("--include_path", str(path))]
        if self.cache_prefix:
            cmd += ["--use_cache", self.cache_prefix]
        if self.confirm_run_unsafe_code:
            cmd.append("--confirm_run_unsafe_code")
        cmd += self._chat_cli_args()
        cmd += ["--seed", ",".join(str(SEEDS[k]) for k in SEEDS)]
        return cmd

    def _chat_cli_args(self) -> list[str]:
        cmd: list[str] = []
        if self.chat_templated:
            cmd.append("--apply_chat_template")
            if isinstance(self.apply_chat_template, str):
                cmd.append(self.apply_chat_template)
            if not self.multiturn:
                cmd += ["--fewshot_as_multiturn", "false"]
        if self.system_instruction is not None:
            cmd += ["--system_instruction", self.system_instruction]
        if self.gen_kwargs:
            # lm-eval reads each value with ast.literal_eval.
            cmd += ["--gen_kwargs", *(f"{k}={v!r}" for k, v in self.gen_kwargs)]
        return cmd

    def cli_string(self) -> str:
        return shlex.join(self.cli_command())

    def lm_eval_config_text(self) -> str:
        """The file ``lm_eval_config`` names: lm-eval's ``include_path`` as a list (its
        ``--include_path`` takes one folder; later folders override earlier ones, as here)."""
        import yaml

        header = "# lm-eval run --config: the include paths of this item's command\n"
        return header + yaml.safe_dump({"include_path": [str(p) for p in self.include_paths]})


class HarnessError(Exception):
    """lm-eval could not run the item; the message says why."""


def _quiet_git() -> None:
    """lm-eval records the git hash of the working directory with ``git describe``, which
    prints ``fatal: not a git repository`` to the terminal outside one; ask git the same with
    its stderr closed (lm-eval's own fallback when git fails is kept)."""
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    def git_commit_hash() -> str | None:
        try:
            out = subprocess.check_output(
                ["git", "describe", "--always"], stderr=subprocess.DEVNULL
            )
            return out.strip().decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())

    private.set_git_commit_hash(git_commit_hash)


def task_manager(include_paths: tuple[Path, ...], names: tuple[str, ...]) -> Any:
    """A TaskManager that knows ``names``, built once per process: the include paths alone
    when they suffice (~0 s), plus only the lm-eval task folders a public task needs (~0.1 s
    with the cached index of ``task_index``, where lm-eval's full index takes ~15 s)."""
    quiet_libraries()
    try:
        return task_index.task_manager(names, include_paths)
    except task_index.UnknownTasks as exc:
        raise HarnessError(
            f"lm-eval does not know the task(s) {', '.join(exc.names)}; check the spelling "
            "(`lm-eval ls tasks` lists them) or add the folder of their YAMLs to include_paths"
        ) from None


@contextmanager
def capture_log(
    path: Path, level: str = "INFO", secrets: tuple[str, ...] = ()
) -> Iterator[logging.Handler]:
    """Write lm-eval's log records (``level`` and up) to ``path`` while the block runs, with
    ``secrets`` scrubbed; the block gets the handler, for records of the item's own."""
    logger = logging.getLogger("lm_eval")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    handler.addFilter(Redactor(secrets))
    old_level = logger.level
    logger.addHandler(handler)
    handler.setLevel(level)
    if logger.getEffectiveLevel() > handler.level:
        logger.setLevel(handler.level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()


@dataclass(frozen=True)
class ItemResult:
    """What lm-eval gave for one item: its results as plain JSON values (the samples included
    when they are logged), for a reasoning item how its thinking went, and how the server
    ended the generation answers it gave (``validity.AnswerEnds.to_dict``)."""

    results: dict[str, Any]
    thinking: dict[str, Any] | None = None
    ends: dict[str, Any] | None = None


def evaluate(request: ItemRequest, policy: ModelPolicy) -> ItemResult:
    """Run lm-eval's ``simple_evaluate`` on the model of ``request`` under ``policy``. A server
    away for longer than the policy's outage window raises ``EndpointGone``."""
    tm = task_manager(request.include_paths, request.tasks)
    from lm_eval.utils import handle_non_serializable

    log = None
    if request.reasoning:
        from ..reasoning import ThinkingLog

        log = ThinkingLog()
        tm = _ThinkingTasks(tm, log, request.think_end_token)
    with reported():
        results = _evaluate(request, tm, policy)
    if results is None:
        raise HarnessError("lm-eval returned no results")
    thinking = None
    if log is not None:
        from ..reasoning import samples_with_thinking

        for rows in (results.get("samples") or {}).values():
            samples_with_thinking(rows, request.think_end_token)
        thinking = log.summary()
    # numpy floats and other objects become plain JSON values, the way lm-eval writes them.
    return ItemResult(
        json.loads(json.dumps(results, default=handle_non_serializable)),
        thinking,
        policy.ends.to_dict(),
    )


def _model(
    request: ItemRequest, model_args: dict[str, Any], policy: ModelPolicy
) -> tuple[str, Any]:
    """The registered name and an instance of the item's model, built the way lm-eval's
    ``simple_evaluate`` builds a named one, with the policy as a constructor argument.
    local-completions with vLLM's remote tokenizer called concurrently: the same requests and
    scores (cli_command stays local-completions), without ~2 ms per string up front."""
    if request.chat_url is not None:
        from .chat_model import CHAT_MODEL_NAME, EvalchemyChat

        name, cls = CHAT_MODEL_NAME, EvalchemyChat
    else:
        from .completions_model import MODEL_NAME, EvalchemyCompletions

        name, cls = MODEL_NAME, EvalchemyCompletions
    extra = {"batch_size": request.batch_size, "policy": policy}
    return name, cls.create_from_arg_obj(model_args, extra)


def _evaluate(request: ItemRequest, tm: Any, policy: ModelPolicy) -> Any:
    import lm_eval

    _quiet_git()
    compile_templates_once()
    model_args = request.lm_eval_model_args()
    name, model = _model(request, model_args, policy)
    results = lm_eval.simple_evaluate(
        model=model,
        # Recorded in the results only (the model is built already).
        model_args=model_args,
        tasks=list(request.tasks),
        num_fewshot=request.num_fewshot,
        batch_size=request.batch_size,
        limit=request.limit,
        log_samples=request.log_samples,
        use_cache=request.cache_prefix,
        task_manager=tm,
        confirm_run_unsafe_code=request.confirm_run_unsafe_code,
        **request.lm_eval_chat_args(),
        **SEEDS,
    )
    if results is not None:
        # lm-eval names a model handed to it as an instance by its class: keep its name.
        results["config"]["model"] = name
    return results


class _ThinkingTasks:
    """The run's TaskManager, whose loaded generation tasks get ``reasoning.ThinkingFilter``
    in front of each of their filter pipelines: lm-eval's filters, and so its metrics, see
    the answer only."""

    def __init__(self, inner: Any, log: Any, end_token: str) -> None:
        self._inner = inner
        self._log = log
        self._end_token = end_token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        from ..reasoning import ThinkingFilter

        loaded = self._inner.load(*args, **kwargs)
        for name, task in loaded["tasks"].items():
            if task.get_config("output_type") != "generate_until":
                continue

            def stops(task: Any = task) -> Any:
                return (task.config.generation_kwargs or {}).get("until")

            def make(name: str = name, stops: Any = stops) -> ThinkingFilter:
                return ThinkingFilter(name, stops, self._log, self._end_token)

            for ensemble in private.task_filters(task):
                ensemble.filters = [make, *ensemble.filters]
        return loaded


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
