"""The plugin's options, each declared once: its flag, environment variable, ini name, type,
bounds and help, and where a value comes from (command line > environment > ini > default).
Read by the pytest options (``glue/options.py``) and by ``run_evalchemy.sh``'s front end
(``cli/frontend.py``). Imports no pytest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.defaults import (
    DEFAULT_CONFIDENCE,
    DEFAULT_CONFIG,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DROP,
    DEFAULT_MAX_INVALID_SHARE,
    DEFAULT_OUTPUT,
)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Where the endpoint's API key is read from, in this order (never from a flag or an ini file).
API_KEY_ENVS = ("EVALCHEMY_API_KEY", "OPENAI_API_KEY")

# Where a value came from.
FLAG, ENV, INI = "flag", "env", "ini"


@dataclass(frozen=True)
class Setting:
    """One option: ``--evalchemy-<name>`` on the command line, ``evalchemy_<name>`` in the ini
    file, ``env`` in the environment when it has one."""

    name: str  # "max_length"
    help: str
    kind: type = str  # str, int, float; bool for a switch
    env: str | None = None
    minimum: float | None = None  # the smallest value a number may take
    maximum: float | None = None  # the largest
    repeatable: bool = False  # the flag may be given several times (a list)
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return f"--evalchemy-{self.name.replace('_', '-')}"

    @property
    def ini(self) -> str:
        return f"evalchemy_{self.name}"

    @property
    def switch(self) -> bool:
        return self.kind is bool


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "endpoint",
        "Completions URL of the vLLM server, e.g. http://host:8000/v1/completions. Env: EVALCHEMY_ENDPOINT",
        env="EVALCHEMY_ENDPOINT",
        repeatable=True,
    ),
    Setting(
        "config",
        f"Evaluation config (JSON, or YAML by extension). Default: {DEFAULT_CONFIG}. Env: EVALCHEMY_CONFIG",
        env="EVALCHEMY_CONFIG",
    ),
    Setting("model", "Model name sent to the server. Default: the first id GET /v1/models lists"),
    Setting(
        "run_id",
        "Run id naming the results folder. Default: YYYYMMDD_HHMMSS_PID. Env: EVALCHEMY_RUN_ID",
        env="EVALCHEMY_RUN_ID",
    ),
    Setting(
        "output",
        f"Results root folder. Default: {DEFAULT_OUTPUT}. Env: EVALCHEMY_OUTPUT",
        env="EVALCHEMY_OUTPUT",
    ),
    Setting(
        "batch_size",
        "Requests per batch for every task (overrides the config)",
        kind=int,
        minimum=1,
    ),
    Setting(
        "max_length",
        "Maximum sequence length. Default: max_model_len from /v1/models, else 2048",
        kind=int,
        minimum=16,
    ),
    Setting(
        "concurrency",
        "auto (adapt to the server) or a fixed number of concurrent requests per item (lm-eval num_concurrent). Default: auto. Env: EVALCHEMY_CONCURRENCY",
        env="EVALCHEMY_CONCURRENCY",
    ),
    Setting(
        "max_concurrency",
        f"Most prompts in flight per endpoint with --evalchemy-concurrency auto. Default: {DEFAULT_MAX_CONCURRENCY}",
        kind=int,
        minimum=1,
    ),
    Setting(
        "tokenizer",
        "Local tokenizer folder or name (needs transformers). Default: the server's /tokenize endpoints",
    ),
    Setting(
        "limit",
        "Samples per task for every task (overrides the config), e.g. 10 for a quick run",
        kind=float,
    ),
    Setting(
        "wait_for_endpoint",
        "Seconds to wait for a server that is not up yet (connection refused, 503, no model listed) before the run fails; progress is printed; 0: fail at once. Default: 5. Env: EVALCHEMY_WAIT_FOR_ENDPOINT",
        kind=float,
        env="EVALCHEMY_WAIT_FOR_ENDPOINT",
        minimum=0,
    ),
    Setting(
        "outage_timeout",
        "Seconds a server that goes away during the items (refused, reset, 5xx, 429) is waited for, with back-off and Retry-After honoured, before the item errors; 0: no waiting. Default: 180. Env: EVALCHEMY_OUTAGE_TIMEOUT",
        kind=float,
        env="EVALCHEMY_OUTAGE_TIMEOUT",
        minimum=0,
    ),
    Setting(
        "timeout",
        "Default per-item timeout in seconds for tasks without 'timeout'",
        kind=float,
        minimum=0.001,
    ),
    Setting(
        "max_retries", "Attempts per request before an item errors. Default: 3", kind=int, minimum=1
    ),
    Setting(
        "ca_bundle",
        "CA bundle (PEM) that signed an https endpoint's certificate. Default: the system's, or REQUESTS_CA_BUNDLE",
    ),
    Setting(
        "serve",
        "Start a vLLM server on this model (folder or hub id) for the session and evaluate it",
    ),
    Setting("gpu", "CUDA_VISIBLE_DEVICES for the server --evalchemy-serve starts (Linux only)"),
    Setting(
        "replicas",
        "vLLM servers --evalchemy-serve starts (replica i on the i-th device of --evalchemy-gpu), behind vllm-router. Default: 1",
        kind=int,
        minimum=1,
    ),
    Setting(
        "router",
        "URL of a vllm-router you run in front of your replicas: every request goes through it",
    ),
    Setting(
        "vllm_python",
        "Python of the environment that has vLLM, for --evalchemy-serve. Env: EVALCHEMY_VLLM_PYTHON. Default: this Python",
        env="EVALCHEMY_VLLM_PYTHON",
    ),
    Setting(
        "serve_timeout",
        "Seconds to wait for the server --evalchemy-serve starts. Default: 600",
        kind=float,
        minimum=1,
    ),
    Setting("log_level", "Level of lm-eval's log written to the results folder. Default: INFO"),
    Setting(
        "gate",
        "How checks are judged: point (the value) or ci (fail only when the whole confidence interval misses). Default: point. Env: EVALCHEMY_GATE",
        env="EVALCHEMY_GATE",
    ),
    Setting(
        "confidence",
        f"Confidence of the intervals and drop tests of --evalchemy-gate=ci. Default: {DEFAULT_CONFIDENCE}",
        kind=float,
        minimum=0,
    ),
    Setting(
        "baseline",
        "A previous run's summary JSON, or its run folder: fail items whose metrics dropped. Env: EVALCHEMY_BASELINE",
        env="EVALCHEMY_BASELINE",
    ),
    Setting(
        "max_drop",
        f"Largest allowed drop (absolute) against --evalchemy-baseline; a task's 'max_drop' overrides it per metric. Default: {DEFAULT_MAX_DROP}",
        kind=float,
        minimum=0,
    ),
    Setting(
        "max_invalid_share",
        "Largest share (0 to 1) of an item's generation answers that ended at max_tokens, "
        "reasoning answers whose thinking never closed, or prompts cut to fit the context, "
        "before the item fails; overrides every task's 'max_invalid_share'. "
        f"Default: each task's, else {DEFAULT_MAX_INVALID_SHARE}. Env: EVALCHEMY_MAX_INVALID_SHARE",
        kind=float,
        env="EVALCHEMY_MAX_INVALID_SHARE",
        minimum=0,
        maximum=1,
    ),
    Setting(
        "chat_template",
        "Format every task's prompts with the served model's chat template: true, false, or the name of one of the server's templates (lm-eval --apply_chat_template). Default: each task's apply_chat_template",
    ),
    Setting(
        "system_instruction",
        "System message before every task's prompt (lm-eval --system_instruction)",
    ),
    Setting(
        "fewshot_as_multiturn",
        "Few-shot examples as user/assistant turns: true or false (lm-eval --fewshot_as_multiturn). Default: true with a chat template",
    ),
    Setting(
        "reasoning",
        "Reasoning model: true, false or auto (the endpoint check looks for thinking). Default: each task's reasoning, else auto. Env: EVALCHEMY_REASONING",
        env="EVALCHEMY_REASONING",
    ),
    Setting(
        "add_bos_token",
        "Start every loglikelihood and generation prompt with the tokenizer's BOS token: true, false or auto (as the model's tokenizer starts a text). Default: each task's add_bos_token, else auto. Env: EVALCHEMY_ADD_BOS_TOKEN",
        env="EVALCHEMY_ADD_BOS_TOKEN",
    ),
    Setting("think_end_token", "Text that ends a reasoning model's thinking. Default: </think>"),
    Setting(
        "thinking_budget",
        "Tokens a reasoning model may think, on top of max_gen_toks for the answer. Default: 2048",
        kind=int,
    ),
    Setting(
        "markdown",
        "Write a Markdown summary here (also appended to $GITHUB_STEP_SUMMARY when set). Env: EVALCHEMY_MARKDOWN",
        env="EVALCHEMY_MARKDOWN",
    ),
    Setting("allow_mixed_models", "Accept endpoints that serve different models", kind=bool),
    Setting(
        "strict_context",
        "Fail items whose prompts are cut to fit max_length or cannot fit with max_gen_toks "
        "(default: a warning in the report). Ini: evalchemy_strict_context = true",
        kind=bool,
    ),
    Setting(
        "no_cache",
        "Do not keep lm-eval's response cache under <output>/.cache (no resume)",
        kind=bool,
    ),
    Setting("no_report", "Do not write the HTML report <output>/<run_id>/report.html", kind=bool),
    Setting(
        "insecure",
        "Do not verify an https endpoint's certificate (warns; prefer --evalchemy-ca-bundle)",
        kind=bool,
    ),
    Setting(
        "allow_unsafe_code",
        "Run tasks whose YAML says `unsafe_code: true` (lm-eval's confirm_run_unsafe_code)",
        kind=bool,
    ),
    Setting(
        "log_samples",
        "Log every item's samples (on by itself with --evalchemy-baseline): make a run "
        "meant as a baseline with it, so later runs are paired with it document by document",
        kind=bool,
    ),
    Setting(
        "resume",
        "Complete the run RUN_ID in place: finished items keep their results, the others "
        "continue from their cached responses",
        metavar="RUN_ID",
    ),
    Setting(
        "resume_force",
        "With --evalchemy-resume: complete the run even though its config, settings, "
        "model or tokenizer differ. This mixes two runs' scores; the summary's 'resumes' says so",
        kind=bool,
    ),
    Setting(
        "serve_arg",
        "Extra argument for the server --evalchemy-serve starts (repeatable), e.g. "
        "--evalchemy-serve-arg=--dtype=bfloat16",
        repeatable=True,
    ),
    Setting(
        "threshold",
        "Threshold TASK:METRIC>=VALUE or <=VALUE (repeatable; overrides the config), e.g. "
        "'mini_arc:acc>=0.6'",
        repeatable=True,
    ),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


def lookup(
    name: str, flag_value: Any, environ: Mapping[str, str], ini_value: Any
) -> tuple[Any, str | None]:
    """A setting's raw value and where it came from (``FLAG``, ``ENV``, ``INI``, or None when
    it is not set): the command line wins over the environment, the environment over the ini
    file. A switch or a repeatable flag that is not given counts as not given."""
    setting = BY_NAME[name]
    given = bool(flag_value) if setting.switch or setting.repeatable else flag_value is not None
    if given:
        return flag_value, FLAG
    if setting.env and environ.get(setting.env):
        return environ[setting.env], ENV
    if ini_value:
        return ini_value, INI
    return None, None


def source_text(name: str, origin: str | None, ini_file: Path | str) -> str:
    """Where a setting's value came from, as a user would look for it: ``--evalchemy-x``,
    ``--evalchemy-x (from the environment variable X)``, ``--evalchemy-x (from evalchemy_x in
    FILE)``."""
    setting = BY_NAME[name]
    if origin == ENV:
        return f"{setting.flag} (from the environment variable {setting.env})"
    if origin == INI:
        return f"{setting.flag} (from {setting.ini} in {ini_file})"
    return setting.flag
