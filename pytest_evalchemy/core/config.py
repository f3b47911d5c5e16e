"""The evaluation config: loading, validation against the shipped JSON Schema, and the plan
of which (benchmark, task) pairs run. Imports neither pytest nor lm-eval."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, Problem
from .resources import benchmarks_dir, schema_path
from .results import inside

PRIORITY_ORDER = {"high": 0, "medium": 1, "low": 2}
DISABLED_REASON = "disabled in config"
# A real config is a few KB; a bigger file is the wrong file (and is not read whole).
MAX_CONFIG_BYTES = 10 * 1024 * 1024
MAX_DEPTH = 32  # a valid config nests 5 deep; parsers and the schema check recurse
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Threshold:
    """A bound on one metric: ``min`` for higher-is-better metrics, ``max`` for the others."""

    metric: str  # lm-eval key, "acc,none"; may carry a subtask prefix: "arc_easy:acc,none"
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class TaskConfig:
    """One entry of ``tasks``: the lm-eval settings of a test item."""

    key: str
    tasks: tuple[str, ...]
    enabled: bool = True
    description: str = ""
    num_fewshot: int | None = None
    batch_size: int | None = None
    limit: int | float | None = None
    metrics: tuple[str, ...] = ()
    output_path: str | None = None
    log_samples: bool = False
    priority: str = "medium"
    timeout: float | None = None
    thresholds: tuple[Threshold, ...] = ()
    # Largest allowed drop against a baseline run, per metric key ("acc,none", "arc_easy:acc,none").
    max_drop: tuple[tuple[str, float], ...] = ()
    configured: bool = True  # False: a benchmark named it without a task entry (lm-eval defaults)
    # Chat and reasoning models (lm-eval's meanings; the run-wide options override them).
    apply_chat_template: bool | str = False  # a string names one of the server's templates
    system_instruction: str | None = None
    fewshot_as_multiturn: bool | None = None  # None: on with a chat template, as in lm-eval
    gen_kwargs: tuple[tuple[str, Any], ...] = ()
    reasoning: str | None = None  # "true", "false", "auto"; None: the run's (default auto)
    # Whether prompts start with the BOS: "true", "false", "auto" (as the model's tokenizer
    # starts a text); None: the run's (default auto).
    add_bos_token: str | None = None
    think_end_token: str | None = None
    thinking_budget: int | None = None
    # The largest share of broken answers or prompts the item takes (None: the run's, else
    # DEFAULT_MAX_INVALID_SHARE); --evalchemy-max-invalid-share overrides it.
    max_invalid_share: float | None = None


@dataclass(frozen=True)
class BenchmarkConfig:
    """One entry of ``benchmarks``: a named group of tasks."""

    name: str
    tasks: tuple[str, ...]
    enabled: bool = True
    description: str = ""


@dataclass(frozen=True)
class PlannedItem:
    """A (benchmark, task) pair: one test item."""

    benchmark: str
    task: TaskConfig
    enabled: bool
    reason: str = ""

    @property
    def key(self) -> str:
        """The item's key in the summary: ``<benchmark>/<task>``."""
        return f"{self.benchmark}/{self.task.key}"

    @property
    def keywords(self) -> tuple[str, ...]:
        """Names ``-k`` should match besides the node names."""
        return (self.benchmark, self.task.key, *self.task.tasks)


@dataclass(frozen=True)
class EvalConfig:
    """A parsed, valid config file."""

    path: Path
    sha256: str
    benchmarks: tuple[BenchmarkConfig, ...]
    tasks: tuple[TaskConfig, ...]
    include_paths: tuple[Path, ...] = field(default=())

    def task(self, key: str) -> TaskConfig | None:
        """The task entry called ``key``, if any."""
        return next((t for t in self.tasks if t.key == key), None)

    @property
    def lm_eval_include_paths(self) -> tuple[Path, ...]:
        """Folders lm-eval should search for task YAMLs: the project's benchmarks first."""
        return (benchmarks_dir(), *self.include_paths)


# ---------------------------------------------------------------- loading


def _pairs_rejecting_duplicates(file: Path, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            # json gives no position here; the key itself is what the user searches for.
            raise ConfigError(
                [
                    Problem(
                        file, f"key {key!r}", "duplicate key: each key may appear once per object"
                    )
                ]
            )
        seen[key] = value
    return seen


def _parse_text(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([Problem(path, where, f"YAML syntax error: {problem}")]) from None
        except RecursionError:
            raise ConfigError([Problem(path, "", "YAML nested too deeply for a config")]) from None
        except ValueError as exc:  # a value the resolver took for a date, e.g. 2024-13-45
            raise ConfigError([Problem(path, "", f"YAML value error: {exc}")]) from None
    try:
        return json.loads(
            text, object_pairs_hook=functools.partial(_pairs_rejecting_duplicates, path)
        )
    except RecursionError:
        raise ConfigError([Problem(path, "", "JSON nested too deeply for a config")]) from None
    except json.JSONDecodeError as exc:
        hint = ""
        before = text[: exc.pos].rstrip()
        if before.endswith(",") and exc.msg.startswith(
            ("Expecting property name", "Expecting value")
        ):
            hint = " (a trailing comma before this point? JSON allows none)"
        raise ConfigError(
            [
                Problem(
                    path,
                    f"line {exc.lineno}, column {exc.colno}",
                    f"JSON syntax error: {exc.msg}{hint}",
                )
            ]
        ) from None
    except ValueError:
        # The one bare ValueError of json: an integer longer than Python converts (no position).
        raise ConfigError(
            [Problem(path, "", "JSON syntax error: a number with more than 4300 digits")]
        ) from None


def missing_config_message(flag: str) -> str:
    """What to do about a config file that is not there; ``flag`` is the front end's option."""
    return (
        f"config file not found; pass {flag} PATH, or run `evalchemy init` to write a "
        f"starting config (schema: {schema_path()})"
    )


def read_config_data(path: Path, flag: str = "--evalchemy-config") -> tuple[Any, bytes]:
    """The data of a config file and its bytes (the summary records their hash), with syntax
    errors turned into ``ConfigError``."""
    try:
        with path.open("rb") as fh:
            # One byte past the limit tells a huge (or endless: /dev/zero) file without reading it.
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([Problem(path, "", missing_config_message(flag))]) from None
    except OSError as exc:
        raise ConfigError([Problem(path, "", f"cannot read config file: {exc.strerror}")]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                Problem(
                    path,
                    "",
                    f"config file is larger than {MAX_CONFIG_BYTES // 2**20} MB; a config is a few "
                    "KB: is this the right file?",
                )
            ]
        )
    if not raw.strip():
        raise ConfigError(
            [Problem(path, "", 'config file is empty; it needs at least {"tasks": {...}}')]
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(path, f"byte {exc.start}", "not UTF-8 text; save the file as UTF-8")]
        ) from None
    return _parse_text(path, text), raw


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = json.loads(schema_path().read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def _json_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _schema_message(error: Any) -> tuple[str, str]:
    """A (where, message) pair a user can act on, from a jsonschema error."""
    where = _json_path(error.absolute_path)
    validator = error.validator
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        bad = ", ".join(repr(k) for k in extra)
        key_where = _json_path([*error.absolute_path, extra[0]]) if extra else where
        return key_where, f"unknown key {bad}; allowed keys: {', '.join(allowed)}"
    if validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return where, f"expected {expected}, got {json.dumps(error.instance)}"
    if validator == "oneOf" and where.endswith(".limit"):
        return where, (
            f"invalid limit {json.dumps(error.instance)}: use a whole number of samples (>= 1), "
            "a fraction between 0 and 1, or null for the whole data set"
        )
    if validator == "oneOf" and where.endswith(".until"):
        return where, (
            f"invalid stop strings {json.dumps(error.instance)}: use a string or a list of "
            'non-empty strings, e.g. ["Question:", "\\n\\n"]'
        )
    if validator == "minLength":
        return where, "must not be empty"
    if validator == "pattern":
        return where, _bad_name(error.instance)
    if validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return (
            where,
            f"{json.dumps(error.instance)} is out of range ({validator} {error.validator_value})",
        )
    if validator == "enum":
        choices = ", ".join(json.dumps(v) for v in error.validator_value)
        return where, f"{json.dumps(error.instance)} is not one of {choices}"
    if validator == "required":
        return where, error.message.replace("is a required property", "is required")
    return where, error.message


def _schema_problems(path: Path, data: Any) -> list[Problem]:
    if not isinstance(data, dict):
        return [
            Problem(
                path, "(top level)", 'the config must be an object with "benchmarks" and/or "tasks"'
            )
        ]
    errors = sorted(
        _validator().iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.validator)
    )
    problems = []
    for error in errors:
        # A name error is reported once through its propertyNames parent; skip the duplicate.
        where, message = _schema_message(error)
        problem = Problem(path, where, message)
        if problem not in problems:
            problems.append(problem)
    if not problems and not data.get("tasks") and not data.get("benchmarks"):
        problems.append(Problem(path, "(top level)", "no benchmarks and no tasks: nothing to run"))
    return problems


def _bad_name(name: str) -> str:
    return (
        f"invalid name {json.dumps(name)}: use letters, digits, '_', '.', '-' "
        "(it names files in the results folder)"
    )


def _plain_problems(path: Path, data: Any) -> list[Problem]:
    """What JSON cannot hold but the parsers let through: NaN and infinities (Python's json
    reads NaN, Infinity and 1e400; YAML .nan), which pass every range check of the schema;
    non-string keys, dates and other YAML types; nesting deeper than any config."""
    problems: list[Problem] = []
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        where, value = stack.pop()
        if len(where) > MAX_DEPTH:
            problems.append(Problem(path, _json_path(where[:MAX_DEPTH]), "nested too deeply"))
        elif isinstance(value, dict):
            for key, child in reversed(value.items()):
                if isinstance(key, str):
                    stack.append(((*where, key), child))
                else:
                    problems.append(
                        Problem(
                            path,
                            _json_path([*where, str(key)]),
                            f"keys must be strings, got {key!r}",
                        )
                    )
        elif isinstance(value, list):
            stack.extend(((*where, i), child) for i, child in reversed(list(enumerate(value))))
        elif isinstance(value, float) and not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
            problems.append(
                Problem(path, _json_path(where), f"{shown} is not a number JSON allows")
            )
        elif not isinstance(value, (str, int, float, type(None))):
            problems.append(
                Problem(
                    path,
                    _json_path(where),
                    f"a {type(value).__name__} is not a JSON value; put it in quotes",
                )
            )
    return problems


def _reference_problems(path: Path, data: dict[str, Any]) -> list[Problem]:
    problems = []
    # The schema's pattern lets "name\n" through (Python's $ matches before a final newline).
    for section in ("benchmarks", "tasks"):
        for name in data.get(section, {}):
            if not _NAME.fullmatch(name):
                problems.append(Problem(path, section, _bad_name(name)))
    for name, bench in data.get("benchmarks", {}).items():
        for i, task_name in enumerate(bench.get("tasks", [])):
            if not _NAME.fullmatch(task_name):
                problems.append(
                    Problem(path, f"benchmarks.{name}.tasks[{i}]", _bad_name(task_name))
                )
    for key, task in data.get("tasks", {}).items():
        out = task.get("output_path")
        if isinstance(out, str) and (Path(out).is_absolute() or ".." in Path(out).parts):
            # A config travels between people; its copies stay under the working directory.
            problems.append(
                Problem(
                    path,
                    f"tasks.{key}.output_path",
                    f"{out!r} leaves the working directory: use a relative path without '..'",
                )
            )
        elif isinstance(out, str) and "\0" not in out and not inside(Path.cwd(), Path(out)):
            # Written as text inside it, but a symbolic link on the way leads elsewhere.
            problems.append(
                Problem(
                    path,
                    f"tasks.{key}.output_path",
                    f"{out!r} leads out of the working directory {Path.cwd()} through a "
                    f"symbolic link (to {Path(out).resolve()}): use a folder inside it",
                )
            )
    for name, bench in data.get("benchmarks", {}).items():
        names = bench.get("tasks", [])
        for i, task_name in enumerate(names):
            if task_name in names[:i]:
                problems.append(
                    Problem(path, f"benchmarks.{name}.tasks[{i}]", f"{task_name!r} is listed twice")
                )
    for key, task in data.get("tasks", {}).items():
        names = task.get("tasks", [])
        for i, task_name in enumerate(names):
            if task_name in names[:i]:
                problems.append(
                    Problem(path, f"tasks.{key}.tasks[{i}]", f"{task_name!r} is listed twice")
                )
    return problems


def _threshold_tuple(raw: dict[str, Any]) -> tuple[Threshold, ...]:
    return tuple(
        Threshold(metric=normalize_metric(metric), min=bound.get("min"), max=bound.get("max"))
        for metric, bound in raw.items()
    )


def normalize_metric(metric: str) -> str:
    """A bare metric name means lm-eval's ``none`` filter: ``acc`` -> ``acc,none``."""
    subtask, sep, name = metric.rpartition(":")
    if "," not in name:
        name = f"{name},none"
    return f"{subtask}{sep}{name}"


def _task_from(key: str, raw: dict[str, Any]) -> TaskConfig:
    return TaskConfig(
        key=key,
        tasks=tuple(raw.get("tasks") or (key,)),
        enabled=raw.get("enabled", True),
        description=raw.get("description", ""),
        num_fewshot=raw.get("num_fewshot"),
        batch_size=raw.get("batch_size"),
        limit=raw.get("limit"),
        metrics=tuple(raw.get("metrics", ())),
        output_path=raw.get("output_path"),
        log_samples=raw.get("log_samples", False),
        priority=raw.get("priority", "medium"),
        timeout=raw.get("timeout"),
        thresholds=_threshold_tuple(raw.get("thresholds", {})),
        max_drop=tuple(
            (normalize_metric(metric), float(drop))
            for metric, drop in raw.get("max_drop", {}).items()
        ),
        apply_chat_template=raw.get("apply_chat_template", False),
        system_instruction=raw.get("system_instruction"),
        fewshot_as_multiturn=raw.get("fewshot_as_multiturn"),
        gen_kwargs=tuple((raw.get("gen_kwargs") or {}).items()),
        reasoning=None if "reasoning" not in raw else str(raw["reasoning"]).lower(),
        add_bos_token=None if "add_bos_token" not in raw else str(raw["add_bos_token"]).lower(),
        think_end_token=raw.get("think_end_token"),
        thinking_budget=raw.get("thinking_budget"),
        max_invalid_share=raw.get("max_invalid_share"),
    )


def parse_config(path: Path, data: Any, raw_bytes: bytes = b"") -> EvalConfig:
    """Validate ``data`` (the parsed file) and build the config model."""
    problems = _plain_problems(path, data) or _schema_problems(path, data)
    if not problems:
        problems = _reference_problems(path, data)
    include_paths = []
    if not problems:
        for i, folder in enumerate(data.get("include_paths", [])):
            try:
                resolved = (path.parent / folder).resolve()
            except ValueError:  # a NUL byte in the name
                problems.append(Problem(path, f"include_paths[{i}]", "not a usable folder name"))
                continue
            if not resolved.is_dir():
                problems.append(
                    Problem(
                        path,
                        f"include_paths[{i}]",
                        f"folder {str(resolved)!r} does not exist (paths are relative to the config file)",
                    )
                )
            include_paths.append(resolved)
    if problems:
        raise ConfigError(problems)
    benchmarks = tuple(
        BenchmarkConfig(
            name=name,
            tasks=tuple(raw["tasks"]),
            enabled=raw.get("enabled", True),
            description=raw.get("description", ""),
        )
        for name, raw in data.get("benchmarks", {}).items()
    )
    tasks = tuple(_task_from(key, raw) for key, raw in data.get("tasks", {}).items())
    return EvalConfig(
        path=path,
        sha256=hashlib.sha256(raw_bytes).hexdigest(),
        benchmarks=benchmarks,
        tasks=tasks,
        include_paths=tuple(include_paths),
    )


def load_config(path: Path, flag: str = "--evalchemy-config") -> EvalConfig:
    """Read, parse and validate a config file (JSON, or YAML by extension); ``flag`` is the
    option a message tells the user to pass."""
    path = Path(path).absolute()
    data, raw = read_config_data(path, flag)
    return parse_config(path, data, raw)


# ---------------------------------------------------------------- the plan


def plan_items(config: EvalConfig) -> list[PlannedItem]:
    """Every (benchmark, task) pair of the config, in a deterministic order.

    A task runs when it is enabled and an enabled benchmark lists it; a benchmark entry with
    no task entry of that name runs that lm-eval task with lm-eval's defaults; an enabled task
    no benchmark lists is its own benchmark. Higher priorities come first, then file order.
    """
    items: list[PlannedItem] = []
    listed: set[str] = set()
    for bench in config.benchmarks:
        for name in bench.tasks:
            listed.add(name)
            task = config.task(name) or TaskConfig(key=name, tasks=(name,), configured=False)
            enabled = bench.enabled and task.enabled
            reason = "" if enabled else DISABLED_REASON
            items.append(PlannedItem(bench.name, task, enabled, reason))
    for task in config.tasks:
        if task.key not in listed:
            items.append(
                PlannedItem(task.key, task, task.enabled, "" if task.enabled else DISABLED_REASON)
            )
    order = {id(item): i for i, item in enumerate(items)}
    return sorted(items, key=lambda it: (PRIORITY_ORDER[it.task.priority], order[id(it)]))
