"""Prometheus metrics, when prometheus_client is installed and KEEPALIVE_PROMETHEUS is True.

Names follow django-prometheus (``django_db_*`` there, ``django_keepalive_*`` here), with
``alias`` and ``vendor`` labels. Values are copied from each process's counters by its
housekeeper thread every few seconds, never on a request's path; with
PROMETHEUS_MULTIPROC_DIR set (multi-process gunicorn) prometheus_client adds the processes
up, the gauges as live sums.
"""

from __future__ import annotations

import threading
from typing import Any

from .pool import CLOSE_REASONS, all_pools
from .stats import unscoped as stats_unscoped

# Seconds between two copies of the counters into the metrics.
SYNC_INTERVAL = 5.0

_metrics: dict[str, Any] | None = None
# Counter values already added to the metrics, per (alias, counter key).
_synced: dict[tuple[str, str], int] = {}
_lock = threading.Lock()

# counter key -> (metric, extra labels)
_COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "connections_opened": ("connections_opened", {}),
    "connections_reused": ("connections_reused", {}),
    **{f"connections_closed_{r}": ("connections_closed", {"reason": r}) for r in CLOSE_REASONS},
    "checks_free": ("checks", {"kind": "free"}),
    "checks_ping": ("checks", {"kind": "ping"}),
    "checks_failed": ("checks_failed", {}),
    "transactions_committed": ("transactions_ended", {"outcome": "committed"}),
    "transactions_rolled_back": ("transactions_ended", {"outcome": "rolled_back"}),
    "requests_queued": ("requests_queued", {}),
    "requests_errors": ("requests_wait_errors", {}),
    "leak_warnings": ("leak_warnings", {}),
    "connections_retried": ("connections_retried", {}),
    "connections_unavailable": ("connections_unavailable", {}),
    "connections_released": ("connections_released", {}),
}


def enabled() -> bool:
    from . import conf

    return bool(conf.global_value(conf.PROMETHEUS))


def _create() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge

    def counter(name: str, doc: str, *labels: str) -> Any:
        return Counter(f"django_keepalive_{name}", doc, ["alias", "vendor", *labels])

    return {
        "connections_opened": counter("connections_opened", "Server connections opened."),
        "connections_reused": counter("connections_reused",
                                      "Kept connections handed out again."),
        "connections_closed": counter("connections_closed", "Connections closed, by reason.",
                                      "reason"),
        "checks": counter("checks", "Health checks before reuse, by kind.", "kind"),
        "checks_failed": counter("checks_failed", "Health checks that found a dead connection."),
        "transactions_ended": counter("transactions_ended",
                                      "Transactions found open at the end of a unit of work.",
                                      "outcome"),
        "requests_queued": counter("requests_queued", "Requests that waited at the bound."),
        "requests_wait_seconds": counter("requests_wait_seconds",
                                         "Time requests waited at the bound."),
        "requests_wait_errors": counter("requests_wait_errors",
                                        "Requests that gave up waiting at the bound."),
        "leak_warnings": counter("leak_warnings",
                                 "Connections held outside units past LEAK_THRESHOLD."),
        "connections_retried": counter("connections_retried",
                                       "Connects retried while the server was unavailable."),
        "connections_retry_wait_seconds": counter(
            "connections_retry_wait_seconds",
            "Time connects spent waiting for an unavailable server."),
        "connections_unavailable": counter(
            "connections_unavailable",
            "Connects given up after CONNECT_RETRY seconds of an unavailable server."),
        "connections_released": counter(
            "connections_released",
            "Connections given back between two transactions of a unit (RELEASE "
            "'transaction')."),
        "connections": Gauge("django_keepalive_connections", "Connections held, by state.",
                             ["alias", "vendor", "state"], multiprocess_mode="livesum"),
        "unscoped_age": Gauge("django_keepalive_connections_unscoped_age_seconds",
                              "Longest time a connection has been held outside any unit.",
                              ["alias", "vendor"], multiprocess_mode="livemax"),
    }


def sync() -> None:
    """Copy this process's counters into the metrics (creating them the first time)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = _create()
        from django.db import connections

        for pool in all_pools():
            vendor = connections.settings[pool.alias]["ENGINE"].rsplit(".", 1)[-1]
            labels = {"alias": pool.alias, "vendor": vendor}
            stats = dict(pool.stats)
            for key, (metric, extra) in _COUNTERS.items():
                _add(pool.alias, key, stats[key], _metrics[metric].labels(**labels, **extra))
            _add(pool.alias, "requests_wait_ms", stats["requests_wait_ms"],
                 _metrics["requests_wait_seconds"].labels(**labels), scale=1000)
            _add(pool.alias, "connections_retry_wait_ms", stats["connections_retry_wait_ms"],
                 _metrics["connections_retry_wait_seconds"].labels(**labels), scale=1000)
            idle = pool.idle_count()
            unscoped, age_ms = stats_unscoped(pool)
            gauge = _metrics["connections"]
            gauge.labels(**labels, state="idle").set(idle)
            gauge.labels(**labels, state="unscoped").set(unscoped)
            gauge.labels(**labels, state="in_use").set(max(0, pool.size - idle - unscoped))
            _metrics["unscoped_age"].labels(**labels).set(age_ms / 1000)


def _add(alias: str, key: str, value: int, child: Any, scale: float = 1) -> None:
    before = _synced.get((alias, key), 0)
    if value > before:
        child.inc((value - before) / scale)
    _synced[(alias, key)] = value


def after_fork() -> None:
    """A forked child's counters start at zero: copy from zero on.

    The metric objects stay (registered once per process tree); in multi-process mode
    prometheus_client gives the child its own files.
    """
    _synced.clear()
