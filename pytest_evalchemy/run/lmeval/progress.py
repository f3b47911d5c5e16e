"""Progress of an item's requests: how many of lm-eval's requests are answered, and how fast.

lm-eval reports progress only through tqdm bars (which the plugin keeps quiet); while an item
runs, its progress bars are swapped for counters that feed ``RequestProgress``. Progress lines
go to the ``pytest_evalchemy.progress`` logger, so ``pytest -o log_cli=true
--log-cli-level=INFO`` shows them live. Imports no pytest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import private

log = logging.getLogger("pytest_evalchemy.progress")
LOG_EVERY_S = 5.0


@dataclass
class RequestProgress:
    """Counts of one item's answered requests."""

    label: str
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    # The prompts allowed in flight now (the adaptive limit), shown in the progress line.
    concurrency: Callable[[], int | None] | None = None
    _last_log: float = 0.0

    def add_total(self, n: int) -> None:
        if self.total == 0:
            self.started = time.monotonic()  # the rate counts from the first request, not setup
        self.total += n

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.info("%s", self.line())

    @property
    def per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        limit = self.concurrency() if self.concurrency else None
        in_flight = f", concurrency {limit}" if limit else ""
        return (
            f"{self.label}: {self.done}/{self.total} requests{share}, "
            f"{self.per_second:.1f} req/s{in_flight}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "per_s": round(self.per_second, 2)}


@contextmanager
def track(progress: RequestProgress) -> Iterator[RequestProgress]:
    """Route lm-eval's API request progress bars into ``progress`` while the block runs."""
    try:
        base_bar, base_async = private.api_bars()
    except ImportError:  # pragma: no cover - lm-eval without its API models
        yield progress
        return

    class Counting:
        """Mixed into lm-eval's bar classes: silent, and counting into ``progress``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "disable": True})
            progress.add_total(int(kwargs.get("total") or 0))

        def update(self, n: float | None = 1) -> bool | None:
            progress.advance(int(n or 0))
            return super().update(n)  # type: ignore[misc]

        def __iter__(self) -> Iterator[Any]:
            # A disabled bar iterates without update(): count each step here.
            for step in super().__iter__():  # type: ignore[misc]
                progress.advance(1)
                yield step

    # The sync path counts answered requests with update(); tqdm_asyncio.gather iterates a
    # cls(as_completed(...), total=len(tasks)) bar and so counts finished batches.
    Bar = type("Bar", (Counting, base_bar), {})
    AsyncBar = type("AsyncBar", (Counting, base_async), {})
    private.set_api_bars(Bar, AsyncBar)
    try:
        yield progress
    finally:
        private.set_api_bars(base_bar, base_async)
