"""Numbers about kept connections in this process, psycopg_pool style."""

from __future__ import annotations

import time
from typing import Any

from .pool import AliasPool, all_pools


def get_stats() -> dict[str, dict[str, Any]]:
    """Return, per alias, the counters since the process started and current measures.

    Counters: connections_opened, connections_reused, connections_closed_<reason>,
    checks_free, checks_ping, checks_failed, transactions_committed,
    transactions_rolled_back, requests_queued, requests_wait_ms, requests_errors,
    leak_warnings, connections_retried (connect attempts repeated while the server was
    unavailable), connections_retry_wait_ms (time connects spent in those retries) and
    connections_unavailable (connects given up after CONNECT_RETRY seconds).
    Measures: connections_num (open or handed out now), connections_idle,
    connections_peak, requests_waiting, connections_unscoped (held by threads outside
    any request or unit of work) and connections_unscoped_age_ms (the oldest such hold).
    """
    report: dict[str, dict[str, Any]] = {}
    for pool in all_pools():
        numbers: dict[str, Any] = dict(pool.stats)
        numbers["connections_num"] = pool.size
        numbers["connections_idle"] = pool.idle_count()
        numbers["connections_peak"] = pool.size_peak
        numbers["requests_waiting"] = pool.waiting
        numbers["connections_unscoped"], numbers["connections_unscoped_age_ms"] = unscoped(pool)
        report[pool.alias] = numbers
    return report


def unscoped(pool: AliasPool, now: float | None = None) -> tuple[int, int]:
    """How many wrappers threads hold outside units, and the oldest hold in ms (0: none)."""
    if now is None:
        now = time.monotonic()
    ages = [now - since for kept, _ in pool.unscoped()
            if (since := kept.unscoped_since) is not None]
    return len(ages), int(max(ages, default=0.0) * 1000)
