"""lm-eval's request cache (``--use_cache``, what a resumed run reads its answers from) written
without holding up the other requests.

lm-eval's ``CachingLM`` opens its ``SqliteDict`` with ``autocommit=True``, and each of its
writes then waits for sqlite's thread to commit it: a round trip to that thread and a disk
transaction per write. It writes every answer twice, once as it arrives (on the event loop
that sends the next requests) and once more after the phase. Measured against the test server
(400 requests, 16 at a time, 50 ms each), that waiting cost 0.23 s of a 1.7 s item.

The connection that sqlitedict's thread holds commits every statement by itself
(``isolation_level=None``), in the order the statements were queued. So a write need not wait
on the event loop: it is on disk as soon as the thread reaches it. What still waits is the
request's own place: a request keeps its place of the concurrency limit (lm-eval's semaphore,
or the adaptive limit) until its answers are on disk, waiting in a worker thread, and a
request sent one at a time waits for the previous answers first. So a run stopped in any way,
SIGKILL included, has every answered request in the cache except those that held a place:
a resume asks again no more than were in flight. The end of each request phase is lm-eval's
own blocking commit. sqlitedict also records the caller's stack with every statement, only to
show it should that statement fail: 0.05 s more per 400 requests, not recorded either. The cache's file and content stay lm-eval's, so the item's
``lm_eval_command`` reads the same cache.

A cache file that cannot be read (a disk error, a copy cut short, bytes overwritten) would
fail every resume of its item with sqlite's ``database disk image is malformed``; before lm-eval
opens it, it is checked, and one that fails the check is moved aside (``set_aside_unreadable``):
the item then asks the server again.

Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sqlite3
from pathlib import Path
from typing import Any

from . import private

# sqlitedict's table when none is named (lm-eval names none), and its value encoding.
_TABLE = "unnamed"
# sqlite's companions of a database file: a journal left by a run that was killed.
_COMPANIONS = ("-journal", "-wal", "-shm")


class RequestCacheWarning(UserWarning):
    """An item's request cache could not be read and was moved aside (pytest's warnings
    summary shows it)."""


def cache_file(prefix: str) -> Path:
    """The file lm-eval keeps ``use_cache=prefix`` in (``CachingLM`` adds the rank; an API
    model is rank 0)."""
    return Path(f"{prefix}_rank0.db")


def unreadable(path: Path) -> str | None:
    """Why the request cache ``path`` cannot be read as lm-eval reads it (sqlite's own
    check of the file, then every answer decoded); None when it can, or there is none."""
    if not path.exists():
        return None
    try:
        # Read-write, as sqlitedict opens it: a journal a killed run left is rolled back.
        with contextlib.closing(sqlite3.connect(path)) as db:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                return verdict.replace("\n", " ")
            tables = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
            )
            if tables.fetchone() is None:
                return None  # sqlitedict makes its table on opening
            for (value,) in db.execute(f'SELECT value FROM "{_TABLE}"'):
                pickle.loads(bytes(value))  # lm-eval trusts its cache as much as this
    except sqlite3.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # an answer that does not decode: anything pickle may raise
        return f"an answer does not decode ({type(exc).__name__}: {exc})"
    return None


def set_aside_unreadable(prefix: str) -> str | None:
    """Move the request cache of ``use_cache=prefix`` aside (``<file>.corrupt-<n>``, with
    its journal) when it cannot be read, so that lm-eval starts a new one; the warning that
    says so, or None when the cache is fine or absent."""
    path = cache_file(prefix)
    why = unreadable(path)
    if why is None:
        return None
    n = 1
    while any(Path(f"{path}.corrupt-{n}{c}").exists() for c in ("", *_COMPANIONS)):
        n += 1
    aside = Path(f"{path}.corrupt-{n}")
    path.rename(aside)
    for companion in _COMPANIONS:
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{companion}").rename(f"{aside}{companion}")
    return (
        f"request cache {path} cannot be read ({why}): moved aside to {aside.name}; the item "
        "asks the server again for what it held"
    )


_database = private.cache_database


class _HeldUntilWritten:
    """A request's place (what lm-eval's ``amodel_call`` acquires and, in its ``finally``,
    releases), given back only by ``give_back``: once the request's answers are written."""

    def __init__(self, place: Any) -> None:
        self._place = place
        self._held = False

    async def acquire(self) -> bool:
        self._held = bool(await self._place.acquire())
        return self._held

    def release(self) -> None:
        """lm-eval's release: deferred to ``give_back``."""

    def give_back(self) -> None:
        if self._held:
            self._held = False
            self._place.release()


class QueuedCacheWrites:
    """A mixin for lm-eval's API models: writes to the request cache are queued for sqlite's
    thread, and a request's place is free again once its answers are on disk."""

    def set_cache_hook(self, cache_hook: Any) -> None:
        db = _database(cache_hook)
        # Only when the thread commits each statement itself: otherwise waiting is what commits.
        if db is not None and db.autocommit and getattr(db.conn, "autocommit", False):
            private.commit_each_write_off(db)
        super().set_cache_hook(cache_hook)  # type: ignore[misc]

    def _flush_cache(self) -> None:
        """Until every write queued so far is on disk."""
        db = _database(getattr(self, "cache_hook", None))
        if db is not None:
            db.commit(blocking=True)

    def model_call(self, *args: Any, **kwargs: Any) -> Any:
        # One request at a time: the previous answers are on disk before the next goes out.
        self._flush_cache()
        return super().model_call(*args, **kwargs)  # type: ignore[misc]

    async def amodel_call(self, session: Any, sem: Any, messages: Any, **kwargs: Any) -> Any:
        place = _HeldUntilWritten(sem)
        try:
            answer = await super().amodel_call(session, place, messages, **kwargs)  # type: ignore[misc]
            if _database(getattr(self, "cache_hook", None)) is not None:
                await asyncio.get_running_loop().run_in_executor(None, self._flush_cache)
            return answer
        finally:
            place.give_back()
