"""Adaptive concurrency: how many prompts one process keeps in flight at one endpoint.

A vLLM server batches many sequences at once, so one request at a time leaves it mostly idle,
while too many only queue on it (and, on a shared server, delay everybody else's requests).
``AdaptiveLimit`` finds the knee from what it measures, in the manner of TCP congestion control
(BBR's startup and its delivery-rate rounds, AIMD's multiplicative cut on a congestion signal
and additive increase after it):

- a *round* is one limit's worth of answered prompts; its rate (prompts/s) and mean latency are
  what the limit is judged by;
- **probe**: start at ``INITIAL`` and double the limit every round while the rate grows by at
  least ``GROWTH`` (20%); a doubling that buys less means the server is saturated;
- **settle**: keep the *knee*, the smallest limit whose rate was within ``KNEE_SHARE`` (90%) of
  the best seen, raised to ``HEADROOM`` x best rate x fastest latency (Little's law: what the
  server works on at once, plus room for the client's turnaround), at most to the next limit
  tried. It never goes below a limit that measured short of the best rate: fewer in flight
  than the server's slots leave slots idle, and a client short of CPU makes fewer *look* as
  good. When the server clearly queues (mean latency above ``QUEUEING`` x the fastest answer)
  it tries ``HEADROOM`` x rate x fastest latency (by Little's law what the server works on at
  once), kept if the rate holds (that is then the knee), else never tried again: only above a
  limit that measured short, and with nothing measured below the knee (it was the first limit
  tried) only when that is at most half the knee;
- **back off**: one *overload event* is one cut. A 429 or 503 cuts the limit to ``CUT`` (0.8,
  as inspect_ai does), a timeout halves it, a round whose latency is ``BLOWUP`` x the settled
  one (someone else is loading the server) cuts it to ``CUT``. Each cut starts a new
  *generation*: the refusals and timeouts of requests sent before it (a burst answering
  requests that were in flight together) are the event already answered and cut no further.
  A refusal while other requests were in flight also caps the limit below the one it was sent
  under (the server admitted fewer than that); the cap rises by one per round after
  ``RELAX_ROUNDS`` rounds without an overload, so a gateway's limit is tried again now and then;
- **recover**: after a cut, the limit grows back by an eighth (at least one) per round towards
  the limit it had (the knee, or the probe's), never above the cap: against a gateway that
  refuses past N it settles at N;
- **re-probe**: every ``REPROBE_ROUNDS`` settled rounds, try twice the limit for a round, and
  keep it only if the rate grows as in the probe.

One ``AdaptiveLimit`` per endpoint URL per process (a ``LimitRegistry`` the caller creates
once per process and hands to every item), shared by every item the process runs, so the second item starts where the first settled. With several prompts per
request (lm-eval's ``batch_size``) it counts prompts, not requests. It is a semaphore whose size
changes, usable from any event loop and thread (lm-eval runs one ``asyncio.run`` per call).

Imports no pytest and no lm-eval.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.defaults import DEFAULT_MAX_CONCURRENCY

DEFAULT_MAX = DEFAULT_MAX_CONCURRENCY
INITIAL = 16  # a few percent of a vLLM server's batch; 400 requests at 64 slots still ramp fast
GROWTH = 1.2
KNEE_SHARE = 0.9
QUEUEING = 2.0
HEADROOM = 1.25
BLOWUP = 3.0
CUT = 0.8
TIMEOUT_CUT = 0.5
RELAX_ROUNDS = 8  # rounds without an overload before the cap from a refusal rises again
RECOVERY = 8  # after a cut the limit grows by limit / RECOVERY (at least 1) per round
REPROBE_ROUNDS = 32
MIN_ROUND = 16  # prompts a round lasts at least: fewer make a rate mostly timing noise
IDLE_S = 1.0  # nothing in flight this long (between items): the next round starts afresh
MAX_REQUEUES = 8  # overload answers a request may get before lm-eval's own retries take over
AUTO = "auto"


@dataclass
class Ticket:
    """One admitted request: its weight (prompts), when it was admitted, how many prompts were
    in flight then (itself included): what the server saw when it answered, and the limit's
    generation then (how many cuts came before it)."""

    weight: int
    start: float
    position: int
    generation: int = 0
    end: float | None = None
    settled: bool = False


class AdaptiveLimit:
    """A limit on prompts in flight that follows the endpoint's throughput (see the module)."""

    def __init__(
        self,
        maximum: int = DEFAULT_MAX,
        initial: int = INITIAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.maximum = max(1, maximum)
        self.limit = max(1, min(initial, self.maximum))
        self.ceiling = self.maximum
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[Ticket], int]] = (
            deque()
        )
        self.phase = "probe"
        self._rates: dict[int, float] = {}  # limit -> rate of its latest round (prompts/s)
        self._latencies: dict[int, float] = {}  # limit -> mean latency of that round
        self._min_latency = math.inf
        self._reference_latency: float | None = None  # of the settled limit, for BLOWUP
        self._rounds = 0
        self._held = 0  # settled rounds since the last probe
        self._generation = 0  # cuts so far: a ticket of an older generation was answered
        self._goal = self.limit  # what the measurements chose; a cut lowers only the limit
        self._knee: int | None = None  # the knee the last settle found
        self._calm = 0  # rounds since the last overload answer
        self._round_limit = self.limit
        self._round_start: float | None = None
        self._round_done = 0
        self._round_latency = 0.0
        self._round_requests = 0
        self._draining = False
        self._floor = 0  # the largest limit that measured short of the best rate: never again
        self._idle_since: float | None = None
        self._warmup = True
        # The last rounds (limit, prompts/s, mean latency, limit after): for logs and tests.
        self.history: deque[tuple[int, float, float, int]] = deque(maxlen=64)
        # Counters for the summary (callers take differences around an item).
        self.peak_in_flight = 0
        self.overloads = 0
        self.timeouts = 0
        self.cuts = 0

    # ------------------------------------------------------------------ admission

    def _fits(self, weight: int) -> bool:
        # A request larger than the limit goes alone rather than never.
        return self._in_flight == 0 or self._in_flight + weight <= self.limit

    def _admit(self, weight: int) -> Ticket:
        self._in_flight += weight
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        now = self._clock()
        idle = self._idle_since is not None and now - self._idle_since > IDLE_S
        if self._round_start is None or (weight == self._in_flight and idle):
            # A round measures the server, not the pause between items; the first round after
            # one also pays the client's start (connections, the first tokens): a warm-up.
            self._new_round(now)
            self._warmup = True
        self._idle_since = None
        return Ticket(weight, now, self._in_flight, self._generation)

    async def acquire(self, weight: int = 1) -> Ticket:
        """Wait until ``weight`` more prompts fit under the limit (first come, first served)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self._fits(weight):
                return self._admit(weight)
            future: asyncio.Future[Ticket] = loop.create_future()
            self._waiters.append((loop, future, weight))
        try:
            return await future
        except asyncio.CancelledError:
            with self._lock:
                for entry in self._waiters:
                    if entry[1] is future:
                        self._waiters.remove(entry)
                        break
            if future.done() and not future.cancelled():
                self.abandon(future.result())
            raise

    def _wake(self) -> None:
        """Admit waiters that now fit (called with the lock held)."""
        while self._waiters and self._fits(self._waiters[0][2]):
            loop, future, weight = self._waiters.popleft()
            ticket = self._admit(weight)
            try:
                loop.call_soon_threadsafe(self._hand_over, future, ticket)
            except RuntimeError:  # its event loop is closed: nobody waits any more
                self._free(ticket)

    def _hand_over(self, future: asyncio.Future[Ticket], ticket: Ticket) -> None:
        if future.done():  # cancelled meanwhile: give the place back
            self.abandon(ticket)
        else:
            future.set_result(ticket)

    def _free(self, ticket: Ticket) -> bool:
        if ticket.settled:
            return False
        ticket.settled = True
        self._in_flight -= ticket.weight
        if self._in_flight == 0:
            self._idle_since = self._clock()
        return True

    # ------------------------------------------------------------------ outcomes

    def succeeded(self, ticket: Ticket) -> None:
        """The request was answered: it counts towards the round's rate and latency."""
        with self._lock:
            if not self._free(ticket):
                return
            now = self._clock()
            latency = (ticket.end or now) - ticket.start
            self._min_latency = min(self._min_latency, latency)
            if self._draining:
                # After a decrease the answers still arriving were sent under the old limit:
                # the round at the new one starts once they are down to it.
                if self._in_flight <= self.limit:
                    self._draining = False
                    self._new_round(now)
                self._wake()
                return
            self._round_done += ticket.weight
            self._round_latency += latency
            self._round_requests += 1
            if (
                self._round_done >= max(self._round_limit, MIN_ROUND)
                and self._round_start is not None
            ):
                elapsed = now - self._round_start
                if elapsed > 0:
                    rate = self._round_done / elapsed
                    latency = self._round_latency / self._round_requests
                    self._end_round(rate, latency)
                    self.history.append((self._round_limit, rate, latency, self.limit))
                    self._new_round(now)
            self._wake()

    def overloaded(self, ticket: Ticket) -> bool:
        """The server answered 429 or 503. True when other requests were in flight with it:
        then the answer is about how many we sent, and the request should simply wait its turn
        again (under the lower limit) rather than use up one of lm-eval's attempts."""
        with self._lock:
            if not self._free(ticket):
                return False
            self.overloads += 1
            self._calm = 0
            crowded = ticket.position > ticket.weight
            if self._new_event(ticket):
                if crowded:
                    # No cut since it was sent, so the limit only rose meanwhile: at most this
                    # many were in flight with it, and the server would not take them all.
                    self.ceiling = max(1, min(self.ceiling, self.limit - 1))
                self._cut(CUT)
            self._wake()
            return crowded

    def timed_out(self, ticket: Ticket) -> None:
        with self._lock:
            if not self._free(ticket):
                return
            self.timeouts += 1
            self._calm = 0
            if self._new_event(ticket):
                self._cut(TIMEOUT_CUT)
            self._wake()

    def abandon(self, ticket: Ticket) -> None:
        """Any other end (an error, a cancellation): the place is freed, nothing is learnt."""
        with self._lock:
            if self._free(ticket):
                self._wake()

    # ------------------------------------------------------------------ the control law

    def _set(self, value: int) -> None:
        self.limit = max(1, min(value, self.ceiling, self.maximum))

    def _aim(self, value: int) -> None:
        """The limit the measurements chose (a trial is only ``_set``): what a cut recovers
        towards."""
        self._goal = max(1, min(value, self.maximum))
        self._set(value)

    def _target(self) -> int:
        return max(1, min(self._goal, self.ceiling, self.maximum))

    def _new_event(self, ticket: Ticket) -> bool:
        """Whether an overload answer is news: its request was sent under the current limit.
        The others were in flight with the request whose answer caused the last cut."""
        return ticket.generation == self._generation

    def _new_round(self, now: float) -> None:
        self._draining = self._in_flight > self.limit
        self._rounds += 1
        self._round_limit = self.limit
        self._round_start = now
        self._round_done = 0
        self._round_latency = 0.0
        self._round_requests = 0

    def _cut(self, factor: float) -> None:
        """One overload event: the limit drops, a new generation starts, and the limit
        recovers towards the goal from the next round on. The rates measured before belong to
        a server in another state; the knee and the floor stay (it has as many slots)."""
        self._generation += 1
        self.cuts += 1
        if self.phase == "probe":
            # The rate grew up to this trial: recover towards it, under the cap a refusal set.
            self._goal = max(self._goal, self.limit)
        self._set(math.floor(self.limit * factor))
        self.phase = "recover"
        self._reference_latency = None
        self._rates.clear()
        self._latencies.clear()
        self._new_round(self._clock())

    def _recover(self) -> None:
        """Additive increase after a cut, up to the goal under the cap."""
        target = self._target()
        if self.limit < target:
            self._set(min(target, self.limit + max(1, self.limit // RECOVERY)))
        if self.limit >= target:
            self.phase = "hold"
            self._held = 0
            self._reference_latency = None

    def _end_round(self, rate: float, latency: float) -> None:
        size = self._round_limit
        if self._warmup:
            self._warmup = False
            return
        self._calm += 1
        if self.ceiling < self.maximum and self._calm > RELAX_ROUNDS:
            self.ceiling += 1  # the server may have room again: recovery or the probe finds out
        if self.phase == "recover" or (self.phase == "hold" and self.limit < self._target()):
            self.phase = "recover"
            self._recover()
            return
        if self.phase == "hold" and size in self._rates:
            # Settled rounds smooth the reference a re-probe is compared with.
            rate = 0.7 * self._rates[size] + 0.3 * rate
        self._rates[size] = rate
        self._latencies[size] = latency
        if self.phase == "probe-down":
            self._settle()
            return
        if self.phase == "probe":
            below = [r for s, r in self._rates.items() if s < size]
            if rate >= GROWTH * max(below, default=0.0) and size < min(self.ceiling, self.maximum):
                self._set(size * 2)  # a trial: the goal stays what was measured
                return
            self._settle()
            return
        # Settled.
        if self._reference_latency is None:
            self._reference_latency = latency
        elif latency > BLOWUP * self._reference_latency:
            self._cut(CUT)
            return
        if self._knee is not None and latency > QUEUEING * self._min_latency:
            # Requests wait on the server: by Little's law it works on about rate x fastest
            # latency prompts at once. Try that (with headroom), but never what measured short
            # (the floor); with nothing measured below the knee, only on clear evidence (half
            # of it or less): a client short of CPU answers late too and makes it look smaller.
            estimate = math.ceil(HEADROOM * rate * self._min_latency)
            if self._floor < estimate < size and (self._floor or estimate <= self._knee // 2):
                self.phase = "probe-down"
                self._set(estimate)
                return
        self._held += 1
        if self._held >= REPROBE_ROUNDS and self.limit < min(self.ceiling, self.maximum):
            self._held = 0
            self.phase = "probe"
            self._rates = {size: rate}
            self._latencies = {size: latency}
            self._set(size * 2)

    def _settle(self) -> None:
        """Keep the smallest limit within KNEE_SHARE of the best rate seen."""
        best = max(self._rates.values())
        knee = min(s for s, r in self._rates.items() if r >= KNEE_SHARE * best)
        short = [s for s in self._rates if s < knee]
        if short:
            # Fewer cost throughput: a probe-down that fell short is never tried again. The
            # probe's rounds are brief (their first answers are of requests sent together), so
            # the largest limit it found short may still be measured once more, settled.
            lowest = max(short) if self.phase == "probe-down" else max(short) - 1
            self._floor = max(self._floor, lowest)
        self._knee = knee
        self.phase = "hold"
        self._held = 0
        self._reference_latency = None
        # At the knee the server's slots are just full, and each one idles between an answer
        # and the client's next request. By Little's law the server works on about best rate x
        # fastest latency prompts at once: HEADROOM x that covers the gap (16 slots: 20), but
        # never more than the next limit tried. Recomputed from the rate, so a re-probe that
        # settles again lands on the same number instead of creeping upwards.
        larger = [s for s in self._rates if s > knee]
        if larger and math.isfinite(self._min_latency):
            needed = math.ceil(HEADROOM * best * self._min_latency)
            knee = max(knee, min(needed, min(larger)))
        self._aim(knee)

    def item_start(self) -> dict[str, int]:
        """Counters at the start of an item (items of a process run one after the other)."""
        with self._lock:
            self.peak_in_flight = self._in_flight
            return {"overloads": self.overloads, "timeouts": self.timeouts, "cuts": self.cuts}

    def item_stats(self, start: dict[str, int]) -> dict[str, Any]:
        """What happened since ``item_start`` returned ``start``."""
        with self._lock:
            return {
                "peak_in_flight": self.peak_in_flight,
                "overloads": self.overloads - start.get("overloads", 0),
                "timeouts": self.timeouts - start.get("timeouts", 0),
                "cuts": self.cuts - start.get("cuts", 0),
                "max_concurrency": self.maximum,
            }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "limit": self.limit,
                "phase": self.phase,
                "in_flight": self._in_flight,
                "peak_in_flight": self.peak_in_flight,
                "overloads": self.overloads,
                "timeouts": self.timeouts,
                "cuts": self.cuts,
                "history": [(s, round(r, 1), round(lat, 4), n) for s, r, lat, n in self.history],
            }


class Permit:
    """What lm-eval's ``amodel_call`` takes as its semaphore (``await acquire()``, then
    ``release()``) for one request of ``weight`` prompts. ``release`` only stops the clock:
    the place is freed by the outcome (``succeeded``, ``overloaded``...), which the caller
    knows only after ``amodel_call`` returns or raises."""

    def __init__(self, limit: AdaptiveLimit, weight: int) -> None:
        self.limit = limit
        self.weight = max(1, weight)
        self.ticket: Ticket | None = None

    async def acquire(self) -> bool:
        self.ticket = await self.limit.acquire(self.weight)
        return True

    def release(self) -> None:
        if self.ticket is not None and self.ticket.end is None:
            self.ticket.end = self.limit._clock()

    def _outcome(self, method: Callable[[Ticket], Any]) -> Any:
        return method(self.ticket) if self.ticket is not None else False

    def succeeded(self) -> None:
        self._outcome(self.limit.succeeded)

    def overloaded(self) -> bool:
        return bool(self._outcome(self.limit.overloaded))

    def timed_out(self) -> None:
        self._outcome(self.limit.timed_out)

    def abandon(self) -> None:
        self._outcome(self.limit.abandon)


class LimitRegistry:
    """The process's adaptive limits, one per endpoint URL (without credentials): every item
    of the process (the single process, or one xdist worker) shares them."""

    def __init__(self) -> None:
        self._limits: dict[str, AdaptiveLimit] = {}
        self._lock = threading.Lock()

    def get(self, url: str, maximum: int = DEFAULT_MAX) -> AdaptiveLimit:
        """The limit of ``url`` (created on first use; a new maximum applies at once)."""
        with self._lock:
            limit = self._limits.get(url)
            if limit is None:
                limit = self._limits[url] = AdaptiveLimit(maximum)
            elif limit.maximum != maximum:
                with limit._lock:
                    limit.maximum = max(1, maximum)
                    limit._set(limit.limit)
            return limit

    def existing(self, url: str) -> AdaptiveLimit | None:
        with self._lock:
            return self._limits.get(url)


def parse_concurrency(text: str) -> int | str:
    """``auto`` or a whole number of at least 1; ValueError otherwise."""
    value = text.strip().lower()
    if value == AUTO:
        return AUTO
    number = int(value)
    if number < 1:
        raise ValueError(text)
    return number
