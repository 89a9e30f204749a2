"""KEEPALIVE_MAX_CONNECTIONS bounds connections per process and alias."""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from django.test import override_settings

import keepalive_mw
from keepalive_mw import ConnectionWaitTimeout, get_stats
from keepalive_mw.pool import pool_for
from tests.helpers import in_thread, pg_admin, pg_sessions

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def one_more_than_held(wait_timeout):
    """A bound that leaves one connection for other threads (this one may hold one)."""
    return override_settings(KEEPALIVE_MAX_CONNECTIONS=pool_for("default").size + 1,
                             KEEPALIVE_WAIT_TIMEOUT=wait_timeout)


def hold_connection(taken: threading.Event, release: threading.Event) -> None:
    with keepalive_mw.scope():
        connections["default"].ensure_connection()
        taken.set()
        release.wait(10)


def test_at_the_bound_a_request_waits_for_a_connection_to_come_back():
    admin = pg_admin()
    before = len(pg_sessions(admin))
    with one_more_than_held(wait_timeout=10):
        taken, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_connection, args=(taken, release))
        holder.start()
        taken.wait(10)

        def waiter():
            with keepalive_mw.scope():
                with connections["default"].cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    return cursor.fetchone()[0]

        result = []
        thread = threading.Thread(target=lambda: result.append(waiter()))
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()  # waiting at the bound
        release.set()
        thread.join(10)
        holder.join(10)
    assert len(result) == 1
    assert len(pg_sessions(admin)) == before + 1  # one kept session served both
    stats = get_stats()["default"]
    assert stats["requests_queued"] == 1 and stats["connections_opened"] == 1


def test_past_the_wait_timeout_a_clear_error_names_alias_and_setting():
    with one_more_than_held(wait_timeout=0.2):
        taken, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_connection, args=(taken, release))
        holder.start()
        taken.wait(10)
        try:
            with pytest.raises(ConnectionWaitTimeout) as excinfo:
                in_thread(lambda: keepalive_mw.scope()(lambda: connections["default"])())
        finally:
            release.set()
            holder.join(10)
    message = str(excinfo.value)
    assert "'default'" in message and "KEEPALIVE_MAX_CONNECTIONS" in message
    assert "KEEPALIVE_WAIT_TIMEOUT" in message
    assert get_stats()["default"]["requests_errors"] == 1


def test_unbounded_by_default():
    assert keepalive_mw.conf.config_for("default").max_connections is None
