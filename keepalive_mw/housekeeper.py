"""One background thread per process that closes kept connections nobody is using.

Without it an idle connection would only be closed when a later request finds it too old;
after a burst, or when traffic stops, sessions would stay open on the server for nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback

from . import conf, metrics
from .pool import CLOSE_IDLE, AliasPool, all_pools

logger = logging.getLogger("keepalive_mw")

# Longest and shortest sleep between two rounds, in seconds.
MAX_INTERVAL = 30.0
MIN_INTERVAL = 0.5

# True while this process's housekeeper thread runs; False again in a forked child.
running = False
_start_lock = threading.Lock()
# Set to make the housekeeper run a round at once (tests, shutdown).
_wake = threading.Event()


def run_once(now: float | None = None) -> int:
    """Close idle kept connections past their age or idle timeout; return how many.

    Also warn about connections held outside units past LEAK_THRESHOLD.
    """
    from .lifecycle import _close

    if now is None:
        now = time.monotonic()
    closed = 0
    for pool in all_pools():
        config = conf.config_for(pool.alias)
        if config is None:
            expired = [(wrapper, CLOSE_IDLE) for wrapper in pool.take_all_idle()]
        else:
            expired = pool.take_expired(config.max_age, config.idle_timeout, now)
            if config.leak_threshold is not None:
                report_leaks(pool, config.leak_threshold, now)
        for wrapper, reason in expired:
            _close(wrapper, pool, reason)
            closed += 1
    return closed


def report_leaks(pool: AliasPool, threshold: float, now: float) -> int:
    """Warn once per hold about each connection held outside units past ``threshold``.

    As HikariCP's leak detection does: the warning says where the thread took it.
    Return how many warnings were logged.
    """
    warned = 0
    for kept, wrapper in pool.unscoped():
        since = kept.unscoped_since
        if since is None or kept.leak_reported or now - since < threshold:
            continue
        if wrapper.connection is None:
            continue  # a wrapper without a session holds a slot, not a connection
        kept.leak_reported = True
        taken_at = kept.taken_at
        if taken_at is None:
            where = "(not recorded)\n"
        else:
            where = "".join(traceback.StackSummary.from_list(taken_at).format())
        logger.warning(
            "a connection of database alias %r has been held outside any request or unit "
            "of work for %.0f s (KEEPALIVE_LEAK_THRESHOLD %g s): end its use with "
            "close_old_connections() or run the code in keepalive_mw.scope(). "
            "Taken at:\n%s",
            pool.alias, now - since, threshold, where.rstrip("\n"),
        )
        pool.stats["leak_warnings"] += 1
        warned += 1
    return warned


def interval() -> float:
    """Sleep between rounds: half the shortest timeout in force, within bounds."""
    shortest = metrics.SYNC_INTERVAL if metrics.enabled() else MAX_INTERVAL
    for pool in all_pools():
        config = conf.config_for(pool.alias)
        if config is not None:
            for timeout in (config.idle_timeout, config.max_age, config.leak_threshold):
                if timeout:
                    shortest = min(shortest, timeout / 2)
    return max(MIN_INTERVAL, shortest)


def _loop() -> None:
    while True:
        _wake.wait(interval())
        _wake.clear()
        try:
            run_once()
            if metrics.enabled():
                metrics.sync()
        except Exception:  # keep the thread alive whatever a round meets
            logger.exception("keepalive_mw housekeeping round failed")


def start() -> None:
    """Start the housekeeper thread of this process if it is not running."""
    global running
    with _start_lock:
        if running:
            return
        thread = threading.Thread(target=_loop, name="keepalive_mw-housekeeper", daemon=True)
        thread.start()
        running = True


def wake() -> None:
    _wake.set()


def after_fork() -> None:
    """In a forked child: the parent's thread is gone; start afresh when needed."""
    global running, _start_lock, _wake
    running = False
    _start_lock = threading.Lock()
    _wake = threading.Event()
