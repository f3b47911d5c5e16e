"""lm-eval's request cache (``--use_cache``, what a resumed run reads its answers from) written
without holding up the requests.

lm-eval's ``CachingLM`` opens its ``SqliteDict`` with ``autocommit=True``, and each of its
writes then waits for sqlite's thread to commit it: a round trip to that thread and a disk
transaction per write. It writes every answer twice, once as it arrives (on the event loop
that sends the next requests) and once more after the phase. Measured against the test server
(400 requests, 16 at a time, 50 ms each), that waiting cost 0.23 s of a 1.7 s item.

The connection that sqlitedict's thread holds commits every statement by itself
(``isolation_level=None``), in the order the statements were queued. So a write need not wait:
it is on disk as soon as the thread reaches it. sqlitedict also records the caller's stack
with every statement, only to show it should that statement fail: 0.05 s more per 400
requests, not recorded either. The end of each request phase still waits until every queued
write is done. A process killed outright loses only the writes still queued, and a resume asks
those requests again. The cache's file and content stay lm-eval's, so the item's
``lm_eval_command`` reads the same cache.

Imports no pytest and no lm-eval.
"""

from __future__ import annotations

from typing import Any


def _database(cache_hook: Any) -> Any:
    return getattr(cache_hook, "dbdict", None)


class QueuedCacheWrites:
    """A mixin for lm-eval's API models: writes to the request cache are queued, not waited
    for; ``_flush_cache`` waits for them (called when a request phase ends, however it ends)."""

    def set_cache_hook(self, cache_hook: Any) -> None:
        db = _database(cache_hook)
        thread = getattr(db, "conn", None)
        # Only when the thread commits each statement itself: otherwise waiting is what commits.
        if getattr(db, "autocommit", False) and getattr(thread, "autocommit", False):
            db.autocommit = False
            if hasattr(thread, "_outer_stack"):
                thread._outer_stack = False
        super().set_cache_hook(cache_hook)  # type: ignore[misc]

    def _flush_cache(self) -> None:
        db = _database(getattr(self, "cache_hook", None))
        if db is not None and getattr(db, "conn", None) is not None:
            db.commit(blocking=True)
