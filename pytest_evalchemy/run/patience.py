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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

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
        response = exc.response
        return _status(response.status_code, response.headers.get("Retry-After"), response.text)
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
        # The body, where the completions model kept it (aiohttp's error has none).
        return _status(exc.status, headers.get("Retry-After"), getattr(exc, "body", None))
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Transient("the answer was cut off (truncated body)")
    if isinstance(exc, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError)):
        return None
    if isinstance(exc, aiohttp.ClientConnectorError):
        return Transient("connection refused")
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        return Transient("the connection was reset")
    return None


def http_answer(status: int, body: str | None) -> str:
    """An HTTP error answer in words: ``HTTP 500: <body, on one line, cut at 300 chars>``."""
    if body is None:
        return f"HTTP {status}"
    text = body.strip().replace("\n", " ")
    if len(text) > 300:
        text = text[:300] + "..."
    return f"HTTP {status}: {text or '(empty body)'}"


def _status(status: int, retry_after: str | None, body: str | None = None) -> Transient | None:
    if status not in TRANSIENT_STATUSES:
        return None
    return Transient(http_answer(status, body), retry_after_seconds(retry_after))


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


class OutageGaveUp(BaseException):
    """A server away for longer than the outage window (or than the item's time allows); the
    last failure is the cause. A ``BaseException`` while it travels up through lm-eval, whose
    retries (tenacity) ask again after any ``Exception``: what the window waited for must not
    be asked again ``--evalchemy-max-retries`` times. ``reported()`` turns it into
    ``EndpointGone`` once out of lm-eval."""


class EndpointGone(Exception):
    """An item's requests gave up on a server that was away: the ``OutageGaveUp`` the item
    reports, an ordinary error."""


@contextmanager
def reported() -> Iterator[None]:
    """``OutageGaveUp`` out of the block as ``EndpointGone``, with the same words and cause."""
    try:
        yield
    except OutageGaveUp as exc:
        raise EndpointGone(str(exc)) from exc.__cause__


class Outage:
    """One endpoint's outage window, shared by every request to it in this process: the
    window opens at the first transient failure and closes at the next answer to a completion
    request, so a server away for three minutes costs three minutes, not three minutes per
    request or per item. Once the window is spent the server is gone: an item (a ``caller``)
    then sends one request, and gives up with its failure (every request of the item, sent or
    not); an answer ends the outage. The tokenizer's answers do not end it: a server that
    tokenizes but fails every completion is not back."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._since: float | None = None
        self._spent = False  # the window ran out and nothing answered since
        self._gone_for: object | None = None  # the caller whose request of a spent outage failed
        self._probe: asyncio.Event | None = None  # set when that request of a spent outage ends
        self._last: tuple[Transient, BaseException] | None = None  # the last failure
        self._lock = threading.Lock()

    def deadline(self) -> float:
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
            return self._since + self.window_s

    def away_for(self) -> float:
        with self._lock:
            return 0.0 if self._since is None else time.monotonic() - self._since

    @property
    def spent(self) -> bool:
        """Whether the server has been away for longer than the window, answering nothing."""
        return self._spent

    def answered(self) -> None:
        with self._lock:
            self._since = None
            self._spent = False
            self._gone_for = None

    def give_up(self, failure: Transient, exc: BaseException, why: str = "") -> OutageGaveUp:
        """The error that ends a request: how long the server was away, why the waiting
        stops (the window by default) and the server's last answer."""
        why = why or f"--evalchemy-outage-timeout {self.window_s:g} s"
        return OutageGaveUp(
            f"the endpoint was unreachable or failing for {self.away_for():.0f} s "
            f"(last: {failure.reason}; {why}): {type(exc).__name__}: {exc}"
        )

    def wait_after(
        self,
        failure: Transient,
        exc: BaseException,
        backoff: Backoff | None,
        until: float | None = None,
        caller: object | None = None,
    ) -> tuple[Backoff, float]:
        """The back-off and the wait after a transient ``failure`` (``exc``); raises the
        give-up error when the window is spent, was spent before, or the wait would pass
        ``until`` (the item's own deadline: the item then errors with the server's last
        answer instead of timing out)."""
        self._last = (failure, exc)
        if self._spent:
            self._gone_for = caller
            raise self.give_up(failure, exc) from exc
        backoff = backoff or Backoff(self.deadline())
        # The window is the endpoint's, not the request's: when other requests were answered
        # since this one first failed (a gateway capping what is in flight answers some and
        # refuses the rest with 429), the server is not away, and this request's time starts
        # again with the window the next failure opened.
        backoff.deadline = self.deadline()
        delay = backoff.delay(failure)
        if delay is None:
            self._spent = True
            self._gone_for = caller
            raise self.give_up(failure, exc) from exc
        if until is not None and time.monotonic() + delay > until:
            # Not spent: the next item waits for the rest of the window.
            raise self.give_up(
                failure,
                exc,
                f"the item's timeout comes before the end of --evalchemy-outage-timeout "
                f"{self.window_s:g} s",
            ) from exc
        return backoff, delay

    def _refuse(self, caller: object | None) -> None:
        """Give up before sending when ``caller`` already failed on the spent outage."""
        last = self._last
        if caller is not None and self._spent and self._gone_for is caller and last is not None:
            raise self.give_up(*last) from last[1]

    def _after_failure(
        self, backoff: Backoff | None, exc: Exception, until: float | None, caller: object | None
    ) -> tuple[Backoff, float]:
        """``wait_after`` for a failed attempt; raises ``exc`` (being handled by the caller)
        when it is not transient or there is no window."""
        failure = classify(exc)
        if failure is None or self.window_s <= 0:
            raise exc  # not transient, or no window: lm-eval's attempts decide
        return self.wait_after(failure, exc, backoff, until, caller)

    def call(
        self,
        attempt: Callable[[], T],
        until: float | None = None,
        caller: object | None = None,
    ) -> T:
        """``attempt()`` until it answers, asking again after transient failures while the
        window lasts (and, with ``until``, the caller's time); anything else, and the last
        failure after the window, is raised."""
        backoff: Backoff | None = None
        while True:
            self._refuse(caller)
            try:
                result = attempt()
            except Exception as exc:
                backoff, delay = self._after_failure(backoff, exc, until, caller)
                time.sleep(delay)
                continue
            self.answered()
            return result

    async def acall(
        self,
        attempt: Callable[[], Awaitable[T]],
        until: float | None = None,
        caller: object | None = None,
    ) -> T:
        """``call`` for a coroutine: waits with ``asyncio.sleep``, holding no connection. While
        the outage is spent, one request at a time is sent (the others wait for how it went):
        a server that is gone gets one request per item, not one per request in flight."""
        backoff: Backoff | None = None
        while True:
            probe = await self._turn(caller)
            try:
                result = await attempt()
            except Exception as exc:
                self._end_probe(probe)
                backoff, delay = self._after_failure(backoff, exc, until, caller)
                await asyncio.sleep(delay)
                continue
            except BaseException:
                self._end_probe(probe)
                raise
            self.answered()
            self._end_probe(probe)
            return result

    async def _turn(self, caller: object | None) -> asyncio.Event | None:
        """None when the request may go; when it is the one request of a spent outage, the
        event to set when it ends. Waits while another request is that one."""
        while True:
            self._refuse(caller)
            with self._lock:
                if not self._spent:
                    return None
                if self._probe is None:
                    self._probe = asyncio.Event()
                    return self._probe
                probe = self._probe
            await probe.wait()

    def _end_probe(self, probe: asyncio.Event | None) -> None:
        if probe is None:
            return
        with self._lock:
            self._probe = None
        probe.set()


@dataclass(frozen=True, eq=False)
class ItemOutage:
    """An endpoint's outage window as one item sees it: no wait goes past ``until`` (the
    item's timeout less a margin, a ``time.monotonic()`` value), and once the
    window is spent the item sends one request."""

    outage: Outage
    until: float | None = None

    @property
    def window_s(self) -> float:
        return self.outage.window_s

    def answered(self) -> None:
        self.outage.answered()

    def wait_after(
        self, failure: Transient, exc: BaseException, backoff: Backoff | None
    ) -> tuple[Backoff, float]:
        return self.outage.wait_after(failure, exc, backoff, self.until, self)

    def call(self, attempt: Callable[[], T]) -> T:
        return self.outage.call(attempt, self.until, self)

    async def acall(self, attempt: Callable[[], Awaitable[T]]) -> T:
        return await self.outage.acall(attempt, self.until, self)


# An item gives up on an outage this long (and at least this share of its timeout) before its
# own timeout would end it: it then errors with the server's last answer instead of timing
# out, with time left to unwind lm-eval and report.
GIVE_UP_MARGIN_S = 2.0
GIVE_UP_MARGIN_SHARE = 0.05


def item_deadline(timeout_s: float | None, start: float) -> float | None:
    """Until when an item that started at ``start`` (``time.monotonic()``) may wait for a
    server, given its timeout."""
    if timeout_s is None:
        return None
    return start + timeout_s - max(GIVE_UP_MARGIN_S, GIVE_UP_MARGIN_SHARE * timeout_s)


class OutageRegistry:
    """The process's outage windows, one per endpoint URL: every item of the process (the
    single process, or one xdist worker) shares them."""

    def __init__(self) -> None:
        self._outages: dict[str, Outage] = {}
        self._lock = threading.Lock()

    def get(self, url: str, window_s: float) -> Outage:
        """The window of ``url``; a changed ``window_s`` starts a new one."""
        with self._lock:
            outage = self._outages.get(url)
            if outage is None or outage.window_s != window_s:
                outage = self._outages[url] = Outage(window_s)
            return outage
