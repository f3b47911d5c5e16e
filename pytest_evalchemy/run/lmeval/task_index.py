"""Where lm-eval's task, group and tag names are defined, and a TaskManager that indexes only
those folders.

lm-eval's default ``TaskManager`` parses all ~14,000 task YAMLs it ships (14-15 s) each time it
is built, to find the few an evaluation asks for. A text scan of the same files finds the
folder that holds every definition of each name (``arc_easy``: ``arc/``; ``mmlu``:
``mmlu/default/``) in well under a second, and the result is kept on disk per lm-eval version,
so a public task resolves in a fraction of a second: lm-eval then indexes only those folders.
The scan and the cache import no lm-eval; ``task_manager`` does.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The logger keeps its name of the flat layout: users filter log lines by it.
from ...core.results import atomic_write_text
from . import private

log = logging.getLogger("pytest_evalchemy.task_index")

# Bump when the scan's rules change: cache files written by older rules are then rebuilt.
SCAN_FORMAT = 2

# `task: name` / `group: name` at the top of a YAML (keys may be quoted: `"task": "name"`).
_DEFINES = re.compile(
    rb"^(['\"]?)(?:task|group)\1[ \t]*:[ \t]*['\"]?([^\s'\"#\[\]{},]+)['\"]?[ \t]*(?:#.*)?$", re.M
)
# `tag:` / `include:` with an inline value or a block list under it.
_TAG_BLOCK = re.compile(rb"^(['\"]?)tag\1[ \t]*:([^\n]*)\n?((?:[ \t]*-[^\n]*(?:\n|$))*)", re.M)
_INCLUDE_BLOCK = re.compile(
    rb"^(['\"]?)include\1[ \t]*:([^\n]*)\n?((?:[ \t]*-[^\n]*(?:\n|$))*)", re.M
)
_IGNORED_DIRS = {"__pycache__", ".ipynb_checkpoints"}  # lm-eval's TaskIndex skips these too
_YAML_NULLS = {"null", "Null", "NULL", "~"}  # `group: null` in a template names nothing


@dataclass(frozen=True)
class Scan:
    """What the YAMLs under a folder declare, by name."""

    defined: Mapping[str, frozenset[Path]]  # task or group name -> folders of the YAMLs naming it
    tags: Mapping[str, frozenset[Path]]  # tag -> folders of the YAMLs whose tasks carry it


def _block_values(inline: bytes, items: bytes) -> set[str]:
    parts = inline.strip().strip(b"[]").split(b",") + [
        line.strip().removeprefix(b"-") for line in items.splitlines()
    ]
    return {p.split(b"#")[0].strip().strip(b"'\"").decode(errors="replace") for p in parts} - {""}


class _Scanner:
    """Reads each file once; follows ``include:`` the way lm-eval merges it (relative to the
    including file), because tags, and sometimes the task name, live in shared templates
    whose names need not end in ``.yaml`` (e.g. ``_default_template_yaml``)."""

    def __init__(self) -> None:
        self._facts: dict[Path, tuple[set[str], set[str] | None, list[Path]]] = {}

    def _own(self, path: Path) -> tuple[set[str], set[str] | None, list[Path]]:
        """Names, tags (None: no ``tag`` key) and includes written in ``path`` itself."""
        if path not in self._facts:
            try:
                text = path.read_bytes()
            except OSError:
                text = b""
            names = {m.group(2).decode(errors="replace") for m in _DEFINES.finditer(text)}
            names -= _YAML_NULLS
            tags: set[str] | None = None
            for m in _TAG_BLOCK.finditer(text):
                tags = (tags or set()) | _block_values(m.group(2), m.group(3))
            includes = [
                path.parent / inc
                for m in _INCLUDE_BLOCK.finditer(text)
                for inc in sorted(_block_values(m.group(2), m.group(3)))
            ]
            self._facts[path] = (names, tags, includes)
        return self._facts[path]

    def facts(self, path: Path, depth: int = 0) -> tuple[set[str], set[str]]:
        """Names and tags of ``path`` with its includes merged the way lm-eval merges them: a
        key of the file itself wins over an included one (several includes: their union, a
        superset, which costs an extra folder at worst)."""
        names, tags, includes = self._own(path)
        inherited_names: set[str] = set()
        inherited_tags: set[str] = set()
        if depth < 8 and (not names or tags is None):  # lm-eval rejects include cycles
            for inc in includes:
                inc_names, inc_tags = self.facts(inc, depth + 1)
                inherited_names |= inc_names
                inherited_tags |= inc_tags
        return names or inherited_names, inherited_tags if tags is None else set(tags)


def _yaml_files(root: Path) -> Iterator[Path]:
    # The files lm-eval's TaskIndex indexes: **/*.yaml outside the ignored folders.
    for path in root.rglob("*.yaml"):
        if not _IGNORED_DIRS.intersection(path.parts) and path.is_file():
            yield path


@functools.lru_cache(maxsize=8)
def scan(root: Path) -> Scan:
    """Every task/group name and every tag the YAMLs under ``root`` declare, with the folders
    that declare them. A text scan: ~0.5 s for lm-eval's 14,000 YAMLs, where parsing them
    takes ~15-30 s. It only points at folders; lm-eval then reads those for real."""
    scanner = _Scanner()
    defined: dict[str, set[Path]] = {}
    tags: dict[str, set[Path]] = {}
    for path in _yaml_files(root):
        names, path_tags = scanner.facts(path)
        for name in names:
            defined.setdefault(name, set()).add(path.parent)
        for tag in path_tags:
            tags.setdefault(tag, set()).add(path.parent)
    return Scan(
        {k: frozenset(v) for k, v in defined.items()}, {k: frozenset(v) for k, v in tags.items()}
    )


def lm_eval_tasks_dir() -> Path | None:
    """The task YAML folder of the installed lm-eval, found without importing it."""
    spec = importlib.util.find_spec("lm_eval")
    for location in (spec.submodule_search_locations or []) if spec else []:
        tasks = Path(location) / "tasks"
        if tasks.is_dir():
            return tasks
    return None


# ---------------------------------------------------------------- the persistent index


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-evalchemy`` (default ``~/.cache/pytest-evalchemy``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-evalchemy"


def _lm_eval_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return "unknown"


def index_key(tasks_dir: Path) -> dict[str, Any]:
    """What the index of ``tasks_dir`` depends on. The version covers an upgrade; the folder
    times cover a task folder added or removed in place (an editable lm-eval checkout)."""
    folders = [tasks_dir, *(p for p in tasks_dir.iterdir() if p.is_dir())]
    return {
        "format": SCAN_FORMAT,
        "lm_eval": _lm_eval_version(),
        "tasks_dir": str(tasks_dir),
        "mtime_ns": max(p.stat().st_mtime_ns for p in folders),
    }


@dataclass(frozen=True)
class PublicIndex:
    """lm-eval's own names, each with the folder (relative to its tasks folder, POSIX style)
    that holds every YAML defining it or carrying it as a tag: their common ancestor. ``""``
    is the tasks folder itself: the name is spread over several task families."""

    tasks_dir: Path
    folders: Mapping[str, str]
    from_cache: bool = False


def _common_folders(tasks_dir: Path, found: Scan) -> dict[str, str]:
    spots: dict[str, set[Path]] = {}
    for mapping in (found.defined, found.tags):
        for name, folders in mapping.items():
            spots.setdefault(name, set()).update(folders)
    out = {}
    for name, folders in sorted(spots.items()):
        common = Path(os.path.commonpath([str(f) for f in folders]))
        out[name] = common.relative_to(tasks_dir).as_posix().removeprefix(".")
    return out


def index_path(tasks_dir: Path, directory: Path | None = None) -> Path:
    """The cache file of ``tasks_dir`` (one per lm-eval installation)."""
    digest = hashlib.sha256(str(tasks_dir).encode()).hexdigest()[:16]
    return (directory or cache_dir()) / f"lm_eval_tasks_{digest}.json"


def public_index(
    tasks_dir: Path | None = None, *, directory: Path | None = None, refresh: bool = False
) -> PublicIndex | None:
    """lm-eval's task index, from the cache when its key still matches, else scanned (and
    saved). None without lm-eval."""
    tasks_dir = tasks_dir or lm_eval_tasks_dir()
    if tasks_dir is None:
        return None
    tasks_dir = Path(tasks_dir).absolute()
    key = index_key(tasks_dir)
    path = index_path(tasks_dir, directory)
    if not refresh:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key:
                folders = {str(k): str(v) for k, v in data["folders"].items()}
                return PublicIndex(tasks_dir, folders, from_cache=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # missing, unreadable or from another format: rebuild
    folders = _common_folders(tasks_dir, scan(tasks_dir))
    _save(path, {"key": key, "folders": folders})
    return PublicIndex(tasks_dir, folders)


def _save(path: Path, data: dict[str, Any]) -> None:
    # Write then rename: parallel workers may build the index at the same time. A cache that
    # cannot be written costs the next run one scan, nothing else.
    try:
        atomic_write_text(path, json.dumps(data, separators=(",", ":")))
    except OSError as exc:
        log.debug("cannot write the task index cache %s: %s", path, exc)


# ---------------------------------------------------------------- a TaskManager (imports lm-eval)


class UnknownTasks(LookupError):
    """Neither the include paths nor lm-eval define these names."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(", ".join(names))
        self.names = tuple(names)


# One TaskManager per (tasks folder, include paths, folders) and process: building is what costs.
_managers: dict[tuple[str, tuple[str, ...], tuple[str, ...] | None], Any] = {}
FULL = None  # the folders key of the full index of the tasks folder


def _tasks_root(tasks_dir: Path | None) -> Path:
    if tasks_dir is not None:
        return Path(tasks_dir)
    import lm_eval.tasks

    # Spelled the way lm-eval spells its own default root, so that each task's recorded
    # config_source is the same path string as with the default index.
    return Path(lm_eval.tasks.__file__).parent


def _manager(root: Path, paths: tuple[str, ...], folders: tuple[str, ...] | None) -> Any:
    key = (str(root), paths, folders)
    if key not in _managers:
        from lm_eval.tasks import TaskManager

        # lm-eval's default: its tasks folder first, the include paths after it (later
        # folders override earlier ones). Here only the folders the names need, same order.
        roots = [str(root)] if folders is FULL else [str(root / f) for f in folders]
        _managers[key] = TaskManager(include_path=[*roots, *paths], include_defaults=False)
    return _managers[key]


def _members(items: Any) -> Iterator[tuple[str, bool]]:
    """(name, must exist) of a group's ``task:`` list. An inline task (a dict whose name no
    YAML defines) is legal; a bare name that no YAML defines is not."""
    for item in items if isinstance(items, list) else []:
        if isinstance(item, str):
            yield item, True
        elif isinstance(item, dict):
            if isinstance(item.get("group"), str):
                yield item["group"], False
                yield from _members(item.get("task"))
            elif isinstance(item.get("task"), str):
                yield item["task"], False


def _closure(tm: Any, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """(every name reachable from ``names``, the missing ones that must exist): the names
    themselves and, recursively, the members of their groups and tags."""
    index = tm.task_index
    seen: set[str] = set()
    required: set[str] = set()
    stack = [(name, True) for name in names]
    while stack:
        name, must = stack.pop()
        entry = index.get(name)
        if entry is None and must:
            required.add(name)
        if name in seen:
            continue
        seen.add(name)
        if entry is None:
            continue
        kind = entry.kind.name
        if kind == "TAG":
            stack.extend((t, True) for t in entry.tags)
        elif kind == "GROUP":
            stack.extend(_members((entry.cfg or {}).get("task")))
    return seen, required


def _outermost(folders: Iterable[str]) -> tuple[str, ...]:
    """The folders that lie in none of the others (a folder inside another would be indexed
    twice, and its tag entries would replace the outer folder's)."""
    kept: list[str] = []
    for folder in sorted(folders):
        if not any(folder.startswith(k + "/") for k in kept):
            kept.append(folder)
    return tuple(kept)


def _resolve(
    own: Any, names: Sequence[str], root: Path, paths: tuple[str, ...], index: PublicIndex
) -> Any:
    """The TaskManager of the task folders the names need, or why the index cannot vouch
    for one: "unknown" names, or names "spread" over several task families.

    Exact by construction: each name's folder holds every YAML that defines it (or, for a
    tag, that carries it), and lm-eval indexes one folder the way it indexes the whole tasks
    folder, in the same sorted order, so the first definition wins as it does there."""
    own_names = set(own.task_index)
    roots: tuple[str, ...] = ()
    tm = own
    while True:
        reachable, required = _closure(tm, names)
        wanted = {index.folders[n] for n in reachable - own_names if n in index.folders}
        if "" in wanted:
            return "spread"
        grown = _outermost({*roots, *wanted})
        if grown == roots:
            break
        roots = grown
        tm = _manager(root, paths, roots)
    return "unknown" if required else tm


def task_manager(
    names: Sequence[str],
    include_paths: Sequence[Path | str] = (),
    *,
    tasks_dir: Path | None = None,
    cache: Path | None = None,
) -> Any:
    """A TaskManager that knows ``names`` and everything they pull in (group and tag members),
    with the same task configs as lm-eval's default one, built from ``include_paths`` and only
    the folders of lm-eval's tasks (or of ``tasks_dir``) that define those names. The full
    index (~15 s for lm-eval's) is the fallback where the scan cannot vouch for the result: a
    name it does not know, or one spread over several task families (lm-eval merges a tag's
    tasks within one indexed folder; a later folder would replace them). ``cache``: the
    folder of the index file (default ``cache_dir()``). Raises ``UnknownTasks``."""
    root = _tasks_root(tasks_dir)
    paths = tuple(str(p) for p in include_paths)
    own = _manager(root, paths, ())  # the include paths alone: ~0 s, enough for most configs
    reachable, required = _closure(own, names)
    if not required and reachable <= set(own.task_index):
        return own
    for refresh in (False, True):
        index = public_index(root, directory=cache, refresh=refresh)
        if index is None:
            break
        found = _resolve(own, names, root, paths, index)
        if not isinstance(found, str):
            return found
        if found != "unknown" or not index.from_cache:
            break
        # A name the cached index lacks may be new in an lm-eval edited in place: scan again.
    full = _manager(root, paths, FULL)
    _, required = _closure(full, names)
    if required:
        raise UnknownTasks(sorted(required))
    return full


@contextmanager
def configs_only() -> Iterator[None]:
    """Tasks loaded while the block runs hold their config only: no data set is downloaded
    (``ConfigurableTask`` loads its data as soon as it is built)."""
    from lm_eval.api.task import ConfigurableTask, TaskConfig

    class _ConfigOnly(ConfigurableTask):
        def __init__(self, config: dict[str, Any] | None = None, **_: Any) -> None:
            self._config = TaskConfig(**(config or {}))

    with private.task_class(_ConfigOnly):
        yield
