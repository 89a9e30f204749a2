"""Numbers about kept connections in this process, psycopg_pool style."""

from __future__ import annotations

from typing import Any

from .pool import all_pools


def get_stats() -> dict[str, dict[str, Any]]:
    """Return, per alias, the counters since the process started and current measures.

    Counters: connections_opened, connections_reused, connections_closed_<reason>,
    checks_free, checks_ping, checks_failed, transactions_committed,
    transactions_rolled_back, requests_queued, requests_wait_ms, requests_errors.
    Measures: connections_num (open or handed out now), connections_idle,
    connections_peak, requests_waiting.
    """
    report: dict[str, dict[str, Any]] = {}
    for pool in all_pools():
        numbers: dict[str, Any] = dict(pool.stats)
        numbers["connections_num"] = pool.size
        numbers["connections_idle"] = pool.idle_count()
        numbers["connections_peak"] = pool.size_peak
        numbers["requests_waiting"] = pool.waiting
        report[pool.alias] = numbers
    return report
