"""Patience with servers: which failures are transient, how long to wait before asking again,
and for how long a server may be away before a request gives up.

A vLLM server that is loading its weights answers connection refused, then 503; one that
restarts is away for 30-120 s; a proxy in front of it answers 429 with ``Retry-After``. None
of these says anything about the request, so asking again later is right. A 4xx (a prompt too
long, a wrong model name) or a read timeout (the server has the request and is slow) is not
transient: those keep lm-eval's own ``max_retries``.

Used by the endpoint check (``requests``) and by the completions model (``requests`` and
``aiohttp``). Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0  # polls a restarting server at least this often
# HTTP statuses that mean "not now": overloaded, starting, restarting, behind a proxy.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Transient:
    """A failure worth asking again for: what happened, in words, and any ``Retry-After``."""

    reason: str
    retry_after: float | None = None


def classify(exc: BaseException) -> Transient | None:
    """``Transient`` when ``exc`` (from requests or aiohttp) says the server is away, busy or
    sent a broken answer; None when asking again would not help (or is lm-eval's business)."""
    import requests

    if isinstance(exc, requests.exceptions.SSLError):
        return None  # a certificate does not fix itself
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return _status(exc.response.status_code, exc.response.headers.get("Retry-After"))
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return Transient("the answer was cut off (truncated body)")
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return Transient("the connection timed out")
    if isinstance(exc, requests.exceptions.Timeout):
        return None  # the server has the request: lm-eval's retries and the item's timeout
    if isinstance(exc, requests.ConnectionError):
        return Transient(connection_reason(exc))
    if isinstance(exc, ValueError) and "JSON" in type(exc).__name__ + str(exc)[:200]:
        return Transient("the answer was not valid JSON")
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with lm-eval[api]
        return None
    if isinstance(exc, aiohttp.ClientResponseError):
        headers = exc.headers or {}
        return _status(exc.status, headers.get("Retry-After"))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Transient("the answer was cut off (truncated body)")
    if isinstance(exc, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError)):
        return None
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Transient("connection refused")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return Transient("the connection was reset")
    return None


def _status(status: int, retry_after: str | None) -> Transient | None:
    if status not in TRANSIENT_STATUSES:
        return None
    return Transient(f"HTTP {status}", retry_after_seconds(retry_after))


def connection_reason(exc: BaseException) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "reset" in text.lower() or "aborted" in text.lower() or "RemoteDisconnected" in text:
        return "the connection was reset"
    return "cannot connect"


class Backoff:
    """Delays between attempts: 0.5 s doubling up to 10 s, a ``Retry-After`` taking their
    place, never past ``deadline`` (a ``time.monotonic()`` value)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.next = FIRST_DELAY_S

    def delay(self, failure: Transient) -> float | None:
        """Seconds to wait before the next attempt, or None when the time is up."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        wanted = failure.retry_after if failure.retry_after is not None else self.next
        self.next = min(MAX_DELAY_S, self.next * 2)
        return min(wanted, left)


class OutageGaveUp(Exception):
    """A server away for longer than the outage window; the last failure is the cause."""


class Outage:
    """One endpoint's outage window, shared by every request to it in this process: the
    window opens at the first transient failure and closes at the next answer, so a server
    away for three minutes costs three minutes, not three minutes per request or per item."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._since: float | None = None
        self._lock = threading.Lock()

    def deadline(self) -> float:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            return self._since + self.window_s

    def away_for(self) -> float:
        with self._lock:
            return 0.0 if self._since is None else time.monotonic() - self._since

    def answered(self) -> None:
        with self._lock:
            self._since = None

    def give_up(self, failure: Transient, exc: BaseException) -> OutageGaveUp:
        return OutageGaveUp(
            f"the endpoint was unreachable or failing for {self.away_for():.0f} s "
            f"(last: {failure.reason}; --evalchemy-outage-timeout {self.window_s:g} s): "
            f"{type(exc).__name__}: {exc}"
        )

    def call(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it answers, asking again after transient failures while the
        window lasts; anything else, and the last failure after the window, is raised."""
        backoff: Backoff | None = None
        while True:
            try:
                result = attempt()
            except Exception as exc:
                backoff, delay = self._after_failure(backoff, exc)
                time.sleep(delay)
                continue
            self.answered()
            return result

    def _after_failure(self, backoff: Backoff | None, exc: Exception) -> tuple[Backoff, float]:
        """The back-off and the wait after a failed attempt; raises ``exc`` (being handled by
        the caller) when it is not transient or there is no window, and the give-up error
        when the window is spent."""
        failure = classify(exc)
        if failure is None or self.window_s <= 0:
            raise exc  # not transient, or no window: lm-eval's attempts decide
        backoff = backoff or Backoff(self.deadline())
        delay = backoff.delay(failure)
        if delay is None:
            raise self.give_up(failure, exc) from exc
        return backoff, delay

    async def acall(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """``call`` for a coroutine: waits with ``asyncio.sleep``, holding no connection."""
        backoff: Backoff | None = None
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                backoff, delay = self._after_failure(backoff, exc)
                await asyncio.sleep(delay)
                continue
            self.answered()
            return result


_OUTAGES: dict[tuple[Any, ...], Outage] = {}
_OUTAGES_LOCK = threading.Lock()


def outage_for(key: tuple[Any, ...], window_s: float) -> Outage:
    """The process's outage window for ``key`` (the run and the endpoint URL)."""
    with _OUTAGES_LOCK:
        outage = _OUTAGES.get(key)
        if outage is None or outage.window_s != window_s:
            outage = _OUTAGES[key] = Outage(window_s)
        return outage
