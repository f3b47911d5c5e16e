"""Every private lm-eval name the plugin relies on, in one place.

lm-eval promises nothing about these (no leading-underscore name, no module global, no error
text is part of its API), and the plugin supports a range of lm-eval versions: each name is
listed in ``NAMES`` with what uses it, the code reaches it through the accessors below, and
``tests/test_lmeval_names.py`` checks every entry against the installed lm-eval, so a change
in lm-eval fails one test that names the name and its user, not an item halfway through a run.

Methods the plugin's models override (``_loglikelihood_tokens``, ``_create_payload``,
``amodel_call`` with its semaphore) cannot go through an accessor: they are listed here, and
the check asks that lm-eval still defines them with the parameters the override takes.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

API_MODELS = "lm_eval.models.api_models"
TEMPLATE_API = f"{API_MODELS}.TemplateAPI"
TEMPLATE_LM = "lm_eval.api.model.TemplateLM"
REMOTE_TOKENIZER = "lm_eval.utils.RemoteTokenizer"
CONFIGURABLE_TASK = "lm_eval.api.task.ConfigurableTask"

# The start of the message of the RuntimeError lm-eval's remote tokenizer raises when it cannot
# read /tokenizer_info: the one sign that the server was away while the model was built.
REMOTE_TOKENIZER_ERROR = "RemoteTokenizer:"


@dataclass(frozen=True)
class PrivateName:
    """One name of lm-eval the plugin uses although lm-eval does not promise it."""

    owner: str  # dotted path of the module or class that holds it
    name: str
    # "attribute": set on instances in the owner's code; "method" / "global": looked up on the
    # owner (with ``params``: its first parameters, in order); "text": a string in its source.
    kind: str
    used_by: str
    params: tuple[str, ...] = ()


NAMES: tuple[PrivateName, ...] = (
    PrivateName(
        TEMPLATE_API,
        "_concurrent",
        "attribute",
        "completions_model (adaptive limit, connection pool)",
    ),
    PrivateName(TEMPLATE_API, "_batch_size", "attribute", "completions_model (the streaming path)"),
    PrivateName(
        TEMPLATE_API,
        "_max_gen_toks",
        "attribute",
        "completions_model (context check of generation)",
    ),
    PrivateName(
        TEMPLATE_LM,
        "_encode_pair",
        "method",
        "completions_model (_pair_strings copies its rule)",
        ("self", "context", "continuation"),
    ),
    PrivateName(
        TEMPLATE_API,
        "_loglikelihood_tokens",
        "method",
        "completions_model (overridden: context check)",
        ("self", "requests"),
    ),
    PrivateName(
        TEMPLATE_API,
        "_create_payload",
        "method",
        "chat_model.ReasoningPayload, chat_model.CountedEnds (overridden)",
        ("self", "messages", "generate", "gen_kwargs", "seed", "eos"),
    ),
    PrivateName(
        TEMPLATE_API,
        "amodel_call",
        "method",
        "completions_model, request_cache (the semaphore `sem` replaced)",
        ("self", "session", "sem", "messages"),
    ),
    PrivateName(
        TEMPLATE_API, "get_batched_requests", "method", "completions_model (its tasks collected)"
    ),
    PrivateName(
        TEMPLATE_API,
        "batch_loglikelihood_requests",
        "method",
        "completions_model (the streaming path)",
    ),
    PrivateName(
        REMOTE_TOKENIZER,
        "session",
        "attribute",
        "completions_model.PrefetchingTokenizer, chat_model.UrlCredentials",
    ),
    PrivateName(
        REMOTE_TOKENIZER,
        "cert_config",
        "attribute",
        "completions_model.PrefetchingTokenizer (TLS of /tokenize)",
    ),
    PrivateName(
        REMOTE_TOKENIZER,
        REMOTE_TOKENIZER_ERROR,
        "text",
        "completions_model (an outage while the model is built)",
    ),
    PrivateName(
        CONFIGURABLE_TASK, "_filters", "attribute", "harness (reasoning: ThinkingFilter put first)"
    ),
    PrivateName(
        "lm_eval.evaluator",
        "get_git_commit_hash",
        "global",
        "harness (replaced: git's stderr closed)",
    ),
    PrivateName(
        API_MODELS, "tqdm", "global", "progress, completions_model (bars replaced by counters)"
    ),
    PrivateName(API_MODELS, "tqdm_asyncio", "global", "progress (bars replaced by counters)"),
    PrivateName("lm_eval.utils", "env", "global", "template_cache (env.from_string wrapped)"),
    PrivateName(
        "lm_eval.tasks._factory",
        "ConfigurableTask",
        "global",
        "testing.task_configs (replaced: no download)",
    ),
    PrivateName(
        "lm_eval.api.model.CacheHook", "dbdict", "attribute", "request_cache (writes queued)"
    ),
    PrivateName("sqlitedict.SqliteDict", "conn", "attribute", "request_cache (writes queued)"),
    PrivateName(
        "sqlitedict.SqliteMultithread",
        "_outer_stack",
        "attribute",
        "request_cache (optional: checked with hasattr)",
    ),
)


def resolve(path: str) -> Any:
    """The module or class at dotted ``path``."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


def problem(entry: PrivateName) -> str | None:
    """Why ``entry`` no longer holds on the installed lm-eval, in one line; None when it does."""
    where = f"{entry.owner}.{entry.name}" if entry.kind != "text" else entry.owner
    what = f"lm-eval changed {where!r}, which {entry.used_by} relies on"
    try:
        owner = resolve(entry.owner)
    except (ImportError, AttributeError) as exc:
        return f"{what}: {entry.owner} is gone ({exc})"
    if entry.kind in ("method", "global"):
        if not hasattr(owner, entry.name):
            return f"{what}: no such {entry.kind}"
        if entry.params:
            found = tuple(inspect.signature(getattr(owner, entry.name)).parameters)
            if found[: len(entry.params)] != entry.params:
                return f"{what}: its parameters are {found}, expected {entry.params} first"
        return None
    # Instance attributes and texts live in the owner's code (and its bases').
    sources = []
    for cls in inspect.getmro(owner) if inspect.isclass(owner) else (owner,):
        try:
            sources.append(inspect.getsource(cls))
        except (OSError, TypeError):
            continue
    text = "\n".join(sources)
    needle = entry.name if entry.kind == "text" else f".{entry.name} ="
    if needle not in text:
        kind = "text" if entry.kind == "text" else "attribute"
        return f"{what}: the {kind} {entry.name!r} is no longer in its code"
    return None


# ------------------------------------------------------------------ accessors


def concurrent(model: Any) -> int:
    """How many requests lm-eval's API model sends at once (its num_concurrent)."""
    return int(model._concurrent)


def batch_size(model: Any) -> int:
    """Prompts per request of lm-eval's API model."""
    return int(model._batch_size)


def max_gen_toks(model: Any) -> int:
    """The model's default generation budget (model arg max_gen_toks)."""
    return int(model._max_gen_toks)


def encode_pair(model: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``TemplateLM._encode_pair``: the token ids of one loglikelihood request."""
    return model._encode_pair(context, continuation)


def remote_session(tokenizer: Any) -> tuple[Any, Any]:
    """The ``requests.Session`` of lm-eval's remote tokenizer and its TLS setting."""
    return tokenizer.session, tokenizer.cert_config


def is_remote_tokenizer(tokenizer: Any) -> bool:
    return hasattr(tokenizer, "session") and hasattr(tokenizer, "headers")


def remote_tokenizer_down(exc: BaseException) -> bool:
    """Whether lm-eval's remote tokenizer raised ``exc`` because /tokenizer_info did not answer."""
    return isinstance(exc, RuntimeError) and str(exc).startswith(REMOTE_TOKENIZER_ERROR)


def task_filters(task: Any) -> list[Any]:
    """The filter ensembles of a loaded lm-eval task."""
    return getattr(task, "_filters", [])


def set_git_commit_hash(function: Callable[[], str | None]) -> None:
    """What lm-eval's evaluator calls to record the working directory's git hash."""
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = function


def api_bar() -> Any:
    """The progress bar class lm-eval's API models look up when they start a loop."""
    from lm_eval.models import api_models

    return api_models.tqdm


def api_bars() -> tuple[Any, Any]:
    """The sync and async progress bar classes of lm-eval's API models."""
    from lm_eval.models import api_models

    return api_models.tqdm, api_models.tqdm_asyncio


def set_api_bars(bar: Any, async_bar: Any) -> None:
    """The bar classes lm-eval's API models draw from now on."""
    from lm_eval.models import api_models

    api_models.tqdm, api_models.tqdm_asyncio = bar, async_bar


def template_env() -> Any:
    """The Jinja environment lm-eval compiles every prompt template with."""
    from lm_eval import utils

    return utils.env


@contextmanager
def task_class(cls: type) -> Iterator[None]:
    """lm-eval's task factory builds ``cls`` instead of ``ConfigurableTask`` while the block runs."""
    from lm_eval.tasks import _factory

    original = _factory.ConfigurableTask
    _factory.ConfigurableTask = cls  # type: ignore[misc]
    try:
        yield
    finally:
        _factory.ConfigurableTask = original  # type: ignore[misc]


def cache_database(cache_hook: Any) -> Any:
    """The open sqlitedict of lm-eval's request cache hook, or None."""
    db = getattr(cache_hook, "dbdict", None)
    return db if getattr(db, "conn", None) is not None else None


def commit_each_write_off(db: Any) -> None:
    """Let sqlitedict's writer thread batch its commits (``_outer_stack``: where it exists,
    sqlitedict's thread would otherwise remember its caller's stack for every statement)."""
    db.autocommit = False
    if hasattr(db.conn, "_outer_stack"):
        db.conn._outer_stack = False
