"""Which domains to poll, how, and what their answers say (README, "How operations are detected").

Each round: one NOWAIT state call for all domains, when an event arrived or the idle check
interval passed; then, per domain, a full poll where something may have changed (an event, a
state change, an operation in flight, the periodic resync), else the two-call idle check when
it is due. Calls run on libvirt's workers; a domain whose lock is held (a revert, an offline
snapshot) answers in a later round without holding up the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Literal

from ..config import Config
from ..model.observations import (
    CONTROL_JOB,
    STATE_SHUTOFF,
    DomainGone,
    DomainPoll,
    DomainUnchanged,
    Observation,
)
from ..model.printable import printable
from ..sources.libvirt.calls import LibvirtUnavailable
from .domain_cache import DomainCache, LoopParts
from .source_health import Source

log = logging.getLogger(__name__)

POLL_WAIT = 0.2  # seconds a round waits for per-domain polls before going on without them

Call = Literal["poll", "check"]


def check_interval(poll_interval: float, domains: int, max_calls_per_second: float) -> float:
    """The idle check interval: poll-interval, or longer so that the two calls of each domain's
    check stay within the call budget."""
    return max(poll_interval, 2 * domains / max_calls_per_second)


CHECK_ROUNDS = 20  # idle checks are made in at most this many rounds per check interval


def check_due(at: float, interval: float) -> float:
    """When an idle check wanted at `at` is made: at the next 1/CHECK_ROUNDS of the interval,
    so that checks spread over the interval share rounds. Each round costs the loop a cycle
    over every domain: at 1,000 domains (10 s) the checks spread by polls took 5.6 cycles a
    second, 7.5 % of a core; now at most 2."""
    step = interval / CHECK_ROUNDS
    return math.ceil(at / step) * step


def due_call(cache: DomainCache, state: tuple[int, int], now: float, woken: bool,
             busy: bool) -> Call | None:
    """A full poll where something may have changed, the idle check when it is due, else none."""
    if (cache.poll is None or woken or state != cache.state or now >= cache.next_resync
            or (busy and now >= cache.next_check)):
        return "poll"
    if now >= cache.next_check:
        return "check"
    return None


def check_saw_change(cache: DomainCache, control: int, snapshot_count: int, busy: bool) -> bool:
    """A job, another snapshot count, or an operation the tracker still follows: poll in full."""
    return (control == CONTROL_JOB or cache.poll is None
            or snapshot_count != len(cache.poll.snapshots) or busy)


class DomainPolls:
    """Polls the domains of `parts`, adding those that appear and dropping those that vanish
    (then `gone` is called), and hands every answer to `feed`, which gives it to the tracker in
    timestamp order."""

    def __init__(self, parts: LoopParts, config: Config, feed: Callable[[Observation], None],
                 gone: Callable[[str], None]) -> None:
        self.adapter, self.domains, self.tracker = parts.adapter, parts.domains, parts.tracker
        self.health, self.later = parts.health, parts.later
        self.config = config
        self.feed = feed
        self.gone = gone
        self._pending: dict[str, tuple[Call, concurrent.futures.Future]] = {}
        self._since: dict[str, float] = {}  # when a still-pending poll was first waited for
        self._woken: set[str] = set()  # domains named by events since the last round
        self._states: dict[str, tuple[int, int]] = {}
        self._states_ok = False
        self._next_states = 0.0
        self._check_interval = config["collector.poll-interval"]

    @property
    def calls_out(self) -> bool:
        """True while a poll or check is out."""
        return bool(self._pending)

    def wake(self, domain: str) -> None:
        """An event named this domain: poll it in full in the next round."""
        self._woken.add(domain)

    def reset(self) -> None:
        """A new connection: its calls are gone, and every domain is polled afresh."""
        self._pending.clear()
        self._states_ok = False
        self._next_states = 0.0
        for cache in self.domains.values():
            cache.next_check = 0.0
            cache.poll = None

    def poll(self, now: float) -> None:
        """One round; the domains source fails when the state list or a call failed."""
        start = time.time()
        woken, self._woken = self._woken, set()
        interval = check_interval(self.config["collector.poll-interval"], len(self.domains),
                                  self.config["collector.max-calls-per-second"])
        # An event may announce a create that fails within 0.1 s: poll its domain first.
        for name in woken:
            if name in self.domains and name not in self._pending:
                with contextlib.suppress(LibvirtUnavailable):
                    self._pending[name] = ("poll", self.adapter.poll_domain(name))
        # Lifecycle events announce state changes, definitions and removals: without one, the
        # list of all domains' states is refreshed at the idle check interval only.
        if woken or now >= self._next_states:
            self.later.start("states", self.adapter.states, self._got_states, Source.DOMAINS)
            self._next_states = now + interval
        self.later.finish(POLL_WAIT)
        if not self._states_ok:
            self.health.mark(Source.DOMAINS, False, time.time() - start)
            return
        for name in [n for n in self.domains if n not in self._states]:
            self._pending.pop(name, None)
            self.feed(DomainGone(now, name))
            del self.domains[name]
            self.adapter.forget_domain(name)
            self.gone(name)
        ok = self._collect(now)
        self._start_calls(now, woken, interval)
        ok &= self._gather(now)
        self._check_interval = interval
        self.health.mark(Source.DOMAINS, ok, time.time() - start)

    def job_progress(self) -> None:
        """Memory copied so far by each external memory create in flight."""
        for op in self.tracker.in_flight():
            if op.operation == "create" and op.kind == "external" and op.memory:
                progress = self.adapter.job_progress(op.domain)
                if progress is not None:
                    self.feed(progress)

    def _got_states(self, future: concurrent.futures.Future) -> None:
        try:
            self._states = future.result()
            self._states_ok = True
        except Exception as exc:  # noqa: BLE001 - unreachable, or the connection broke
            log.warning("cannot list domains: %s", exc)
            self._states_ok = False

    def _start_calls(self, now: float, woken: set[str], interval: float) -> None:
        """A full poll or an idle check of each listed domain that is due one and has none out."""
        for name, state in self._states.items():
            cache = self.domains.get(name)
            if cache is None:  # built only when new: a crc32 and a dataclass per domain a round
                cache = self.domains[name] = DomainCache.first_seen(name, now)
            if name in self._pending:
                continue
            call = due_call(cache, state, now, name in woken, self.tracker.is_busy(name))
            cache.state = state
            try:
                if call == "poll":
                    self._pending[name] = ("poll", self.adapter.poll_domain(name))
                elif call == "check":
                    active = state[0] != STATE_SHUTOFF
                    self._pending[name] = ("check", self.adapter.check_domain(name, active))
                    cache.next_check = check_due(now + interval, interval)
            except LibvirtUnavailable as exc:  # an earlier call of this domain still runs
                log.debug("poll of %s: %s", printable(name), printable(exc))

    def _gather(self, now: float) -> bool:
        """Nearly every call answers within a millisecond: collect them in this round, and the
        full polls the checks that saw a change started. False when a call failed."""
        concurrent.futures.wait([f for _, f in self._pending.values()], timeout=POLL_WAIT)
        ok = self._collect(now)
        if any(call == "poll" and f.done() for call, f in self._pending.values()):
            concurrent.futures.wait([f for _, f in self._pending.values()], timeout=POLL_WAIT)
            ok &= self._collect(now)
        return ok

    def _collect(self, now: float) -> bool:
        """Hand on the answered polls and checks. False when a call failed."""
        ok = True
        for name, (call, future) in list(self._pending.items()):
            if not future.done():
                if now - self._since.setdefault(name, now) > self.config["libvirt.timeout"]:
                    log.warning("libvirt has not answered a poll of %s for %.0f s",
                                printable(name), now - self._since[name])
                    self._since[name] = now
                continue
            del self._pending[name]
            self._since.pop(name, None)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - the domain vanished mid-poll, say
                log.debug("%s of %s failed: %s", call, printable(name), printable(exc))
                ok = False
                continue
            cache = self.domains.get(name)
            if cache is None:
                continue
            if call == "check":
                self._checked(name, cache, *result)
            else:
                self._polled(name, cache, result, now)
        return ok

    def _checked(self, name: str, cache: DomainCache, looked: float, control: int,
                 _control_ms: int, snapshot_count: int) -> None:
        """A check that saw a change starts a full poll; one that saw none says so."""
        if check_saw_change(cache, control, snapshot_count, self.tracker.is_busy(name)):
            try:
                self._pending[name] = ("poll", self.adapter.poll_domain(name))
            except LibvirtUnavailable:
                cache.next_check = 0.0
        else:
            self.feed(DomainUnchanged(looked, name))

    def _polled(self, name: str, cache: DomainCache, poll: DomainPoll, now: float) -> None:
        cache.update_poll(poll, now)
        self.feed(poll)
        if self.tracker.is_busy(name):
            cache.next_check = time.time() + self.config["collector.busy-interval"]
        else:
            cache.next_check = check_due(time.time() + self._check_interval,
                                         self._check_interval)
