"""Liveness of a kept connection: free checks first, a bounded round trip only when needed."""

from __future__ import annotations

import logging
import select
import socket
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("keepalive_mw")

_POLLIN_OR_HUP = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


def socket_fd(raw: Any) -> int | None:
    """Return the socket descriptor of a psycopg, psycopg2 or mysqlclient connection."""
    fileno = getattr(raw, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except Exception:
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def driver_says_closed(raw: Any) -> bool:
    """Return True when the driver already knows its connection is gone (no I/O)."""
    closed = getattr(raw, "closed", False)  # psycopg 3: bool; psycopg2: int
    if closed:
        return True
    if getattr(raw, "broken", False):  # psycopg 3 marks a lost connection broken
        return True
    is_open = getattr(raw, "open", True)  # mysqlclient: 0 once closed
    return not is_open


def socket_poller(fd: int | None) -> Any:
    """Return a poll object watching ``fd`` for input, hang-up or error (None for None)."""
    if fd is None:
        return None
    poller = select.poll()
    poller.register(fd, _POLLIN_OR_HUP)
    return poller


def socket_has_news(poller: Any) -> bool:
    """Return True when an idle connection's socket is readable: EOF, error or bytes.

    An idle connection's server sends nothing unless it is going away (pg_terminate_backend,
    restart, idle timeout) or pushes an asynchronous message (NOTIFY, parameter change).
    Either way the connection deserves a ping; otherwise it is alive as far as anyone can
    tell without a round trip.
    """
    return bool(poller.poll(0))


# What a connection's driver says about its transaction, without I/O.
IDLE = 0
IN_TRANSACTION = 1
BROKEN = 2
# libpq's PQtransactionStatus: IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN (bad connection).
_LIBPQ_STATES = (IDLE, IN_TRANSACTION, IN_TRANSACTION, IN_TRANSACTION, BROKEN)


def transaction_state(wrapper: BaseDatabaseWrapper) -> int:
    """Return IDLE, IN_TRANSACTION or BROKEN, from the driver's own state.

    Where the driver cannot tell (mysqlclient), a transaction is assumed open when
    autocommit is off.
    """
    raw = wrapper.connection
    pgconn = getattr(raw, "pgconn", None)  # psycopg 3: libpq's own value, no info object
    if pgconn is not None:
        return _LIBPQ_STATES[pgconn.transaction_status]
    status = getattr(getattr(raw, "info", None), "transaction_status", None)  # psycopg2
    if status is not None:
        return _LIBPQ_STATES[status]
    if driver_says_closed(raw):
        return BROKEN
    in_transaction = getattr(raw, "in_transaction", None)  # sqlite3
    if in_transaction is not None:
        return IN_TRANSACTION if in_transaction else IDLE
    return IDLE if wrapper.autocommit else IN_TRANSACTION


def _shutdown(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()  # the driver still owns the descriptor


def ping(wrapper: BaseDatabaseWrapper, fd: int | None, timeout: float) -> bool:
    """Run the backend's round-trip check, giving up on the socket after ``timeout``.

    A dead network can leave a read blocked for minutes; a watchdog shuts the socket down
    so that the driver's blocked read fails at once.
    """
    if fd is None:
        return bool(wrapper.is_usable())
    lock = threading.Lock()
    # The watchdog fired: the connection is unusable even if is_usable() raced it.
    state = {"done": False, "fired": False}

    def watchdog() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                _shutdown(fd)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    try:
        usable = bool(wrapper.is_usable())
    finally:
        with lock:
            state["done"] = True
        timer.cancel()
    if state["fired"]:
        logger.warning(
            "ping of a kept connection to alias %r took over %g s: connection given up",
            wrapper.alias,
            timeout,
        )
        return False
    return usable


# Statements that return a PostgreSQL session to its state after connect, in one round
# trip. Values given at connect time (OPTIONS["options"], role and database defaults)
# survive RESET ALL; init_connection_state() then restores Django's time zone and role.
_POSTGRESQL_RESET = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"
)


def reset_session(wrapper: BaseDatabaseWrapper) -> None:
    """Return the session to its just-connected state (PostgreSQL; MySQL: locks only)."""
    raw = wrapper.connection
    if wrapper.vendor == "postgresql":
        if hasattr(raw, "pgconn"):  # psycopg 3: the simple protocol runs several statements
            raw.execute(_POSTGRESQL_RESET.encode(), prepare=False)
        else:
            with raw.cursor() as cursor:
                cursor.execute(_POSTGRESQL_RESET)
        wrapper.init_connection_state()
    elif wrapper.vendor == "mysql":
        # mysqlclient exposes no COM_RESET_CONNECTION: release named locks; session
        # variables and temporary tables are not reset (see README).
        with raw.cursor() as cursor:
            cursor.execute("SELECT RELEASE_ALL_LOCKS()")
    else:
        return
    if not wrapper.autocommit:  # the driver opened a transaction for the reset: end it
        raw.commit()
