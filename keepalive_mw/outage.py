"""Riding out an outage: a connect the server cannot accept now is retried, within a bound.

A database restarting, failing over or full ("too many clients") refuses new connections
for a moment. Django fails every request that needs one in that moment; keepalive_mw makes
it wait and retry with capped exponential backoff and jitter, up to ``CONNECT_RETRY``
seconds, then fails it as before. Only the connect is retried, never a statement: a
statement may have run before its connection broke, a refused connect has done nothing.

Errors that mean "not now" (the server down, starting, shutting down or full; PgBouncer
unable to reach it) are retried; every other connect error (bad password, missing
database, unknown host) fails at once. libpq reports no SQLSTATE for errors during the
connect, so PostgreSQL's are recognised by their messages, which PostgreSQL sends in
English unless the server's ``lc_messages`` says otherwise.
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Any

from . import conf
from .pool import pool_for

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from .pool import AliasPool

logger = logging.getLogger("keepalive_mw")

# Fragments of the messages of connects PostgreSQL (or PgBouncer in front of it) could not
# accept for now.
PG_UNAVAILABLE = (
    "Connection refused",  # nothing listens: the server is down or restarting
    "No such file or directory",  # its Unix socket is gone, for the same reason
    "server closed the connection unexpectedly",  # it went away during the connect
    "Connection reset by peer",
    "the database system is starting up",  # 57P03
    "the database system is shutting down",  # 57P03
    "the database system is in recovery mode",  # 57P03
    "the database system is not yet accepting connections",  # 57P03 (16+)
    "the database system is not accepting connections",  # 57P03 (hot standby off)
    "terminating connection due to administrator command",  # 57P01
    "too many clients already",  # 53300: max_connections
    "too many connections for",  # 53300: a role's or database's CONNECTION LIMIT
    "remaining connection slots are reserved",  # 53300: reserved for superusers/roles
    # PgBouncer
    "no more connections allowed",  # max_client_conn
    "pgbouncer cannot connect to server",
    "server login has been failing",  # server_login_retry
)

# MySQL/MariaDB error codes of connects the server could not accept for now.
MYSQL_UNAVAILABLE = frozenset({
    2002,  # CR_CONNECTION_ERROR: can't connect (socket, or TCP with MariaDB's client)
    2003,  # CR_CONN_HOST_ERROR: can't connect to the server on host
    2006,  # CR_SERVER_GONE_ERROR: the server has gone away during the connect
    2013,  # CR_SERVER_LOST: lost connection at the handshake
    1040,  # ER_CON_COUNT_ERROR: too many connections
    1203,  # ER_TOO_MANY_USER_CONNECTIONS
    1226,  # ER_USER_LIMIT_REACHED: max_user_connections
    1053,  # ER_SERVER_SHUTDOWN: shutdown in progress
})

# Backoff between attempts: BACKOFF_FIRST, doubled after each failed attempt up to
# BACKOFF_CAP. Each wait is drawn between half and all of that (jitter), so that the
# threads and processes of a fleet do not all retry at the same instant.
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 1.0

# The clock and the sleep, module globals so that tests can drive them without waiting.
monotonic = time.monotonic


def sleep(seconds: float) -> None:
    # time.sleep looked up at each call: under gevent, the cooperative one it patches in,
    # even when this module was imported first (gunicorn --preload).
    time.sleep(seconds)


def unavailable(exc: BaseException, vendor: str) -> bool:
    """Is ``exc``, raised by a driver's connect, the server being unavailable for now?"""
    if vendor == "postgresql":
        message = str(exc)
        return any(fragment in message for fragment in PG_UNAVAILABLE)
    if vendor == "mysql":
        args = getattr(exc, "args", ())
        return bool(args) and args[0] in MYSQL_UNAVAILABLE
    return False


def get_new_connection(wrapper: BaseDatabaseWrapper, conn_params: dict[str, Any]) -> Any:
    """A kept wrapper's ``get_new_connection``: retry while the server is unavailable."""
    connect = type(wrapper).get_new_connection
    try:
        connection = connect(wrapper, conn_params)
    except Exception as exc:
        config = conf.config_for(wrapper.alias)
        if config is None or not config.connect_retry or not unavailable(exc, wrapper.vendor):
            raise
        return _retry(wrapper, conn_params, exc, config.connect_retry)
    pool = pool_for(wrapper.alias)
    if pool.outage_since is not None:
        _ended(pool)
    return connection


def _retry(wrapper: BaseDatabaseWrapper, conn_params: dict[str, Any], error: Exception,
           bound: float) -> Any:
    """Retry the connect until it succeeds, fails otherwise, or ``bound`` seconds pass."""
    connect = type(wrapper).get_new_connection
    pool = pool_for(wrapper.alias)
    stats = pool.stats
    started = monotonic()
    if pool.outage_began(started):
        logger.warning("database alias %r is unavailable (%s): connects are retried for up "
                       "to %s s each", wrapper.alias, _first_line(error), bound)
    deadline = started + bound
    backoff = BACKOFF_FIRST
    try:
        while True:
            remaining = deadline - monotonic()
            if remaining <= 0:
                stats["connections_unavailable"] += 1
                raise error
            sleep(min(remaining, backoff * (0.5 + 0.5 * random.random())))
            backoff = min(BACKOFF_CAP, backoff * 2)
            stats["connections_retried"] += 1
            try:
                connection = connect(wrapper, conn_params)
            except Exception as exc:
                if not unavailable(exc, wrapper.vendor):
                    raise
                error = exc
                continue
            _ended(pool)
            return connection
    finally:
        stats["connections_retry_wait_ms"] += int((monotonic() - started) * 1000)


def _ended(pool: AliasPool) -> None:
    lasted = pool.outage_ended(monotonic())
    if lasted is not None:
        logger.warning("database alias %r is available again after %.1f s", pool.alias, lasted)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
