"""Kept connections and the per-process, per-alias pool that holds them between uses.

The pool holds Django ``DatabaseWrapper`` objects, not raw driver connections: a wrapper is
taken when a thread (or greenlet) first touches an alias and given back at the end of the
request, so the same server session serves request after request whatever thread runs it.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Iterator

from . import conf
from .exceptions import ConnectionWaitTimeout
from .health import socket_poller

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper


# Reasons a kept connection is closed; the suffixes of the connections_closed_* counters.
CLOSE_AGE = "age"
CLOSE_BROKEN = "broken"
CLOSE_IDLE = "idle"
CLOSE_ERRORS = "errors"
CLOSE_FORK = "fork"
CLOSE_LEAKED_ATOMIC = "leaked_atomic"
CLOSE_REASONS = (CLOSE_AGE, CLOSE_BROKEN, CLOSE_IDLE, CLOSE_ERRORS, CLOSE_FORK,
                 CLOSE_LEAKED_ATOMIC)

COUNTERS = (
    "connections_opened",
    "connections_reused",
    *("connections_closed_" + reason for reason in CLOSE_REASONS),
    "checks_free",
    "checks_ping",
    "checks_failed",
    "transactions_committed",
    "transactions_rolled_back",
    "requests_queued",
    "requests_wait_ms",
    "requests_errors",
    "leak_warnings",
    "connections_retried",
    "connections_retry_wait_ms",
    "connections_unavailable",
    "connections_released",
)


class KeptConnection:
    """What keepalive_mw knows about one wrapper's current server connection."""

    __slots__ = ("opened_at", "lifetime_factor", "last_used_at", "fd", "poller", "suspect",
                 "finalizer", "unscoped_since", "taken_at", "leak_reported")

    def __init__(self) -> None:
        # monotonic time of connect(); None until the wrapper first connects.
        self.opened_at: float | None = None
        # Cut of MAX_AGE for this connection, so a fleet does not reconnect at once.
        self.lifetime_factor = 1.0
        # monotonic time the connection was last given back: its idle time decides pings.
        self.last_used_at = 0.0
        # Socket file descriptor, polled for EOF or unsolicited bytes before reuse; None
        # for SQLite and drivers that do not expose one.
        self.fd: int | None = None
        # A poll object registered on fd once, so that each check is a single syscall.
        self.poller: Any = None
        # Database errors happened during the last use: ping before the next one.
        self.suspect = False
        # Frees the wrapper's slot in its pool if the wrapper is garbage collected without
        # being given back (a thread that died holding it); detached when freed otherwise.
        self.finalizer: weakref.finalize | None = None
        # monotonic time a thread took the wrapper outside any request or unit of work;
        # None while a request or unit holds it, or while it is idle. What the unscoped
        # counts and ages and the leak warning read.
        self.unscoped_since: float | None = None
        # Where that thread took it ((file, line, function, None) per frame, innermost
        # last), captured only when LEAK_THRESHOLD is set: what the leak warning shows.
        self.taken_at: list[tuple[str, int, str, None]] | None = None
        # The leak warning was logged for this hold: once per hold, not every round.
        self.leak_reported = False

    def opened(self, fd: int | None) -> None:
        self.opened_at = self.last_used_at = time.monotonic()
        self.lifetime_factor = 1.0 - random.random() * conf.MAX_AGE_JITTER
        self.fd = fd
        self.poller = socket_poller(fd)
        self.suspect = False

    def expired(self, max_age: float | None, now: float) -> bool:
        if max_age is None or self.opened_at is None:
            return False
        return now - self.opened_at >= max_age * self.lifetime_factor


def kept_of(wrapper: BaseDatabaseWrapper) -> KeptConnection | None:
    """Return the KeptConnection of a wrapper keepalive_mw manages, else None."""
    return wrapper.__dict__.get("_keepalive")


class AliasPool:
    """Idle kept wrappers of one alias in this process, and the count against the bound."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        self._lock = threading.Lock()
        # Signalled when a wrapper comes back or a slot frees, for requests waiting at the bound.
        self._freed = threading.Condition(self._lock)
        # Idle wrappers with a live connection, most recently used last: reuse takes the
        # hottest one and lets the coldest reach the idle timeout after a burst.
        self._idle: list[BaseDatabaseWrapper] = []
        # Wrappers that exist for this alias (handed out or idle): what the bound limits.
        self.size = 0
        # Most wrappers that existed at once since the process started.
        self.size_peak = 0
        # Requests waiting at the bound right now.
        self.waiting = 0
        # Counters, psycopg_pool style (noun prefix, unit suffix); all keys present, so
        # that counting on the hot path is a plain dict update.
        self.stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        # Wrappers threads hold outside any request or unit of work, by their
        # KeptConnection: what get_stats(), the metrics and the leak warning see of them.
        # Weak references, so that a thread that dies holding one does not keep it alive.
        self._unscoped: dict[KeptConnection, weakref.ref[BaseDatabaseWrapper]] = {}
        # Time (outage.monotonic) a connect first found the server unavailable in the
        # current outage; None while connects succeed. What logs an outage once, not once
        # per request.
        self.outage_since: float | None = None
        # Fronts no thread holds (release mode "transaction", see borrow.py): wrappers
        # without a session of their own, kept so that what Django caches on a wrapper
        # (server version, features) is computed once. Not counted against the bound.
        self._fronts: list[BaseDatabaseWrapper] = []

    # -- taking and giving back -----------------------------------------------------

    def take(self, bound: int | None, wait_timeout: float) -> BaseDatabaseWrapper | None:
        """Pop the most recently used idle wrapper, or reserve a slot and return None.

        At the bound, wait up to ``wait_timeout`` seconds for a wrapper to come back or a
        slot to free, then raise ConnectionWaitTimeout.
        """
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if bound is None or self.size < bound:
                self._reserve_locked()
                return None
            started = time.monotonic()
            deadline = started + wait_timeout
            self.waiting += 1
            try:
                while True:
                    if self._idle:
                        return self._idle.pop()
                    if self.size < bound:
                        self._reserve_locked()
                        return None
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.stats["requests_errors"] += 1
                        raise ConnectionWaitTimeout(self.alias, bound, wait_timeout)
                    self._freed.wait(remaining)
            finally:
                self.waiting -= 1
                self.stats["requests_wait_ms"] += int((time.monotonic() - started) * 1000)
                self.stats["requests_queued"] += 1

    def reserve(self) -> None:
        """Count one more wrapper against the bound, whatever the bound."""
        with self._lock:
            self._reserve_locked()

    def _reserve_locked(self) -> None:
        self.size += 1
        if self.size > self.size_peak:
            self.size_peak = self.size

    def give_back(self, wrapper: BaseDatabaseWrapper) -> None:
        """Keep a clean wrapper with a live connection for the next user."""
        with self._lock:
            self._idle.append(wrapper)
            if self.waiting:  # Condition.notify() costs two lock operations even for none
                self._freed.notify()

    def track(self, wrapper: BaseDatabaseWrapper) -> KeptConnection:
        """Make a new wrapper from a reserved slot a kept one."""
        kept = wrapper._keepalive = KeptConnection()
        kept.finalizer = weakref.finalize(wrapper, self._collected, kept)
        return kept

    def discard(self, wrapper: BaseDatabaseWrapper) -> None:
        """A kept wrapper leaves the pool for good: free its slot."""
        kept = kept_of(wrapper)
        if kept is not None and kept.finalizer is not None and kept.finalizer.detach():
            self.held_in_unit(kept)
            self.forget()

    def forget(self) -> None:
        """Free a slot (its wrapper closed, never made, or collected)."""
        with self._lock:
            self.size -= 1
            self._freed.notify()

    def _collected(self, kept: KeptConnection) -> None:
        self.held_in_unit(kept)
        self.forget()

    def take_front(self) -> BaseDatabaseWrapper | None:
        with self._lock:
            return self._fronts.pop() if self._fronts else None

    def give_back_front(self, front: BaseDatabaseWrapper) -> None:
        with self._lock:
            self._fronts.append(front)

    def drop_fronts(self) -> list[BaseDatabaseWrapper]:
        with self._lock:
            fronts, self._fronts = self._fronts, []
        return fronts

    # -- held outside requests and units ---------------------------------------------

    def held_outside(self, wrapper: BaseDatabaseWrapper, taken_at: Any) -> None:
        """A thread took ``wrapper`` outside any request or unit of work."""
        kept = wrapper._keepalive
        kept.unscoped_since = time.monotonic()
        kept.taken_at = taken_at
        kept.leak_reported = False
        with self._lock:
            self._unscoped[kept] = weakref.ref(wrapper)

    def held_in_unit(self, kept: KeptConnection) -> None:
        """The wrapper of ``kept`` is no longer held outside a unit (adopted, ended, gone)."""
        if kept.unscoped_since is not None:
            kept.unscoped_since = None
            kept.taken_at = None
            with self._lock:
                self._unscoped.pop(kept, None)

    def unscoped(self) -> list[tuple[KeptConnection, BaseDatabaseWrapper]]:
        """The wrappers held outside units now, with their KeptConnection."""
        with self._lock:
            held = list(self._unscoped.items())
        alive = []
        for kept, ref in held:
            wrapper = ref()
            if wrapper is not None:
                alive.append((kept, wrapper))
        return alive

    # -- outages -------------------------------------------------------------------

    def outage_began(self, now: float) -> bool:
        """A connect found the server unavailable: True if that starts an outage."""
        with self._lock:
            if self.outage_since is not None:
                return False
            self.outage_since = now
            return True

    def outage_ended(self, now: float) -> float | None:
        """A connect succeeded: the outage's length in seconds, None if there was none."""
        with self._lock:
            since, self.outage_since = self.outage_since, None
        return None if since is None else now - since

    # -- housekeeping ---------------------------------------------------------------

    def take_expired(
        self, max_age: float | None, idle_timeout: float | None, now: float
    ) -> list[tuple[BaseDatabaseWrapper, str]]:
        """Remove idle wrappers past their age or idle timeout; return them with the reason."""
        expired: list[tuple[BaseDatabaseWrapper, str]] = []
        with self._lock:
            keep = []
            for wrapper in self._idle:
                kept = wrapper._keepalive
                if kept.expired(max_age, now):
                    expired.append((wrapper, "age"))
                elif idle_timeout is not None and now - kept.last_used_at >= idle_timeout:
                    expired.append((wrapper, "idle"))
                else:
                    keep.append(wrapper)
            self._idle[:] = keep
        return expired

    def take_all_idle(self) -> list[BaseDatabaseWrapper]:
        with self._lock:
            idle, self._idle = self._idle, []
        return idle

    def idle_count(self) -> int:
        return len(self._idle)


# One pool per alias keepalive_mw manages in this process.
_pools: dict[str, AliasPool] = {}
_pools_lock = threading.Lock()


def pool_for(alias: str) -> AliasPool:
    try:
        return _pools[alias]
    except KeyError:
        with _pools_lock:
            return _pools.setdefault(alias, AliasPool(alias))


def all_pools() -> Iterator[AliasPool]:
    return iter(list(_pools.values()))


def drop_all() -> list[AliasPool]:
    """Forget every pool (in a forked child); return them for their idle wrappers."""
    pools = list(_pools.values())
    _pools.clear()
    return pools
