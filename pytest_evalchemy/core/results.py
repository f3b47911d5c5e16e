"""The results folder: run ids, the layout of a run folder (``RunPaths``), atomic writes and
the versions a summary records. Imports no pytest and no lm-eval."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import UsageProblem

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def default_run_id(now: float | None = None, pid: int | None = None) -> str:
    """``YYYYMMDD_HHMMSS_PID``, the seed guide's default run id."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.localtime(now))
    return f"{stamp}_{pid if pid is not None else os.getpid()}"


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe folder name; raise ``UsageProblem`` otherwise."""
    if not _SAFE_NAME.match(run_id or "") or ".." in run_id:
        raise UsageProblem(
            f"run id {run_id!r} is not a safe folder name: use 1-128 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, without '..' or '/'"
        )
    return run_id


def now_iso() -> str:
    """The current time in ISO 8601 with the UTC offset."""
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def parse_iso(text: Any) -> datetime | None:
    """A time ``now_iso`` wrote (a summary's ``started_at``); None for what is not one."""
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        return None


@dataclass(frozen=True)
class RunPaths:
    """The seed guide's results layout under ``<output>/<run_id>/``."""

    root: Path
    run_id: str

    @classmethod
    def create(cls, output: Path, run_id: str) -> RunPaths:
        return cls(Path(output) / validate_run_id(run_id), run_id)

    @property
    def summary(self) -> Path:
        return self.root / f"evalchemy_summary_{self.run_id}.json"

    @property
    def log(self) -> Path:
        return self.root / f"evalchemy_{self.run_id}.log"

    @property
    def errors_log(self) -> Path:
        return self.root / f"evalchemy_errors_{self.run_id}.log"

    def benchmark_results(self, benchmark: str) -> Path:
        return self.root / f"{benchmark}_results.json"

    def benchmark_log(self, benchmark: str) -> Path:
        return self.root / f"{benchmark}_benchmark.log"

    def item_dir(self, benchmark: str, task: str) -> Path:
        """An item's own folder (lm-eval log, results, samples, request cache): items running
        in parallel never share a file."""
        return self.root / "items" / benchmark / task


def current_umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a moment's race, at worst 0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` so that a reader sees the old file or the new one, never half of one.
    The file gets the mode ``open()`` would give it (0666 less the umask), not the 0600 of a
    temporary file: a CI artifact upload or a teammate must be able to read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def append_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def check_writable(output: Path) -> None:
    """Fail before any request is sent when results could not be written."""
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".evalchemy-write-check-") as fh:
            # A full disk (or a file size limit) still lets a file be created: write to it.
            fh.write(b"x" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise UsageProblem(
            f"results folder {str(output)!r} is not writable ({exc.strerror}); pass "
            "--evalchemy-output with a writable folder"
        ) from None


# ---------------------------------------------------------------- file names from given names

# What a name given to the run (a task YAML's ``task``) cannot bring into a file name as it is:
# path separators (the file would land elsewhere), NUL and control characters, and the
# characters Windows and CI artifact uploads (GitHub's upload-artifact) refuse.
_UNSAFE_CHARS = r'/\\\x00-\x1f\x7f<>:"|?*'
_UNSAFE = re.compile(f"[{_UNSAFE_CHARS}]")
# NAME_MAX is 255 bytes: room is left for the prefix and suffix around the name.
MAX_NAME_BYTES = 200


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be part of a file name as it is; None when it can."""
    if not name.strip():
        return "is empty"
    found = _UNSAFE.search(name)
    if found:
        char = found.group()
        if char in "/\\":
            what = "a path separator"
        elif char.isprintable():
            what = "a character Windows and CI artifact uploads refuse"
        else:
            what = "a NUL or control character"
        return f"holds {what} ({char!r})"
    if ".." in name:
        return "holds '..'"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def safe_file_part(name: str) -> str:
    """``name`` as one part of a file name that stays in its folder: what
    ``file_name_problem`` refuses is percent-encoded (``%`` too, so ``name_of_file_part``
    gives the name back), and a name too long is cut, with a digest of it that keeps it
    apart from others. A name that holds none of these is returned as it is."""
    part = re.sub(f"[%{_UNSAFE_CHARS}]", lambda m: f"%{ord(m.group()):02X}", name)
    part = part.replace("..", "%2E%2E")
    if len(part.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        head = part.encode()[: MAX_NAME_BYTES - 17].decode(errors="ignore")
        part = f"{re.sub(r'%[0-9A-F]?$', '', head)}~{digest}"
    return part


def name_of_file_part(part: str) -> str:
    """The name ``safe_file_part`` made ``part`` of."""
    from urllib.parse import unquote

    return unquote(part)


def child_path(folder: Path, name: str) -> Path:
    """``folder / name``, which must be a file right in ``folder`` (symbolic links resolved);
    ``ValueError`` otherwise. The last guard of a file name built from a given name."""
    path = folder / name
    if name in ("", ".", "..") or path.name != name or path.parent.resolve() != folder.resolve():
        raise ValueError(f"{name!r} is not a file name in {folder}")
    return path


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path`` lies in ``folder`` once symbolic links are resolved (a path written
    as text inside a folder may lead out of it through a link)."""
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


# ---------------------------------------------------------------- output paths, tried


@contextmanager
def _missing_folders_made(folder: Path) -> Iterator[str | None]:
    """Make ``folder``'s missing folders for a trial write, and remove them afterwards (those
    that are still empty). Yields None, or why they cannot be made."""
    base = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if base is not None and not base.is_dir():
        yield f"{base} {'is a file' if base.is_file() else 'leads nowhere'}, not a folder"
        return
    made: list[Path] = []
    problem = None
    for missing in reversed([folder, *folder.parents]):
        if missing.exists():
            continue
        try:
            missing.mkdir()
        except OSError as exc:
            problem = f"{missing} cannot be made ({exc.strerror})"
            break
        made.append(missing)
    try:
        yield problem
    finally:
        for missing in reversed(made):
            with contextlib.suppress(OSError):  # something else wrote there meanwhile
                missing.rmdir()


def _new_file_problem(folder: Path) -> str | None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".evalchemy-write-check-"):
            return None
    except OSError as exc:
        return f"no file can be made in {folder} ({exc.strerror})"


def output_file_problem(path: Path) -> str | None:
    """Why a file could not be written at ``path``, found by trying (permission bits say
    nothing to root): the missing folders are made, the file is opened for append and a new
    file made beside it (an atomic write replaces the file with a new one), then whatever did
    not exist before is removed again. None when it can be written."""
    if path.is_dir():
        return "it is a folder, not a file"
    existed = path.exists() or path.is_symlink()
    with _missing_folders_made(path.parent) as problem:
        if problem:
            return problem
        try:
            with path.open("a", encoding="utf-8"):
                pass
        except OSError as exc:
            return f"it cannot be opened for writing ({exc.strerror})"
        finally:
            if not existed:
                path.unlink(missing_ok=True)
        return _new_file_problem(path.parent)


def output_folder_problem(path: Path) -> str | None:
    """Why files could not be written in the folder ``path``, tried as
    ``output_file_problem`` tries (what it made is removed again); None when they can."""
    if path.exists() and not path.is_dir():
        return "it is a file, not a folder"
    with _missing_folders_made(path) as problem:
        return problem or _new_file_problem(path)


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


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (read from package metadata: imports nothing)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name, dist in (
        ("pytest", "pytest"),
        ("lm_eval", "lm_eval"),
        ("pytest_evalchemy", "pytest-evalchemy"),
    ):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out
