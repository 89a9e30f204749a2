"""Only stale or broken connections are closed, and broken ones are never handed out."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings
from freezegun import freeze_time

from keepalive_mw import get_stats
from tests.helpers import (
    in_thread,
    my_admin,
    my_sessions,
    pg_admin,
    pg_sessions,
    pg_terminate_all,
    wsgi_get,
)
from tests.proxy import StallingProxy

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "server did not reach the expected state"
        time.sleep(0.02)


def warm(alias, n):
    """Leave ``n`` kept connections of ``alias`` in the pool."""
    import threading

    barrier = threading.Barrier(n)

    def hold():
        from django.db import connections as handler

        handler[alias].ensure_connection()
        barrier.wait(10)  # all n open at once, so n distinct sessions
        from keepalive_mw import units

        units.on_request_finished(None)

    def request():
        from keepalive_mw import units

        units.on_request_started(None)
        units.set_outcome(units.SUCCEEDED)
        hold()

    with ThreadPoolExecutor(n) as executor:
        list(executor.map(lambda _: request(), range(n)))
    assert get_stats()[alias]["connections_idle"] == n


def test_steady_state_checks_cost_no_round_trip():
    admin = pg_admin()
    pid = in_thread(wsgi_get, "/pid/default/")[1]
    for _ in range(20):
        assert in_thread(wsgi_get, "/pid/default/")[1] == pid
    stats = get_stats()["default"]
    assert stats["checks_free"] == 20 and stats["checks_ping"] == 0
    (query,) = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s",
                             [int(pid)]).fetchone()
    assert query == "SELECT pg_backend_pid()"  # the view's; no SELECT 1 ran


def test_sessions_killed_by_the_server_fail_no_request():
    admin = pg_admin()
    warm("default", 3)
    killed = {pid for pid, _ in pg_sessions(admin)}
    assert pg_terminate_all(admin) >= 3
    wait_until(lambda: not killed & {pid for pid, _ in pg_sessions(admin)})
    with ThreadPoolExecutor(4) as executor:
        results = list(executor.map(lambda _: wsgi_get("/pid/default/"), range(40)))
    assert [status for status, _ in results] == [200] * 40
    assert not killed & {int(pid) for _, pid in results}
    stats = get_stats()["default"]
    assert stats["connections_closed_broken"] == 3


def test_mariadb_sessions_killed_by_the_server_fail_no_request():
    admin = my_admin()
    warm("mysql", 2)
    killed = {session for session, _ in my_sessions(admin)}
    with admin.cursor() as cursor:
        for session in killed:
            cursor.execute(f"KILL {session}")
    wait_until(lambda: not killed & {s for s, _ in my_sessions(admin)})
    results = [in_thread(wsgi_get, "/pid/mysql/") for _ in range(10)]
    assert [status for status, _ in results] == [200] * 10
    assert get_stats()["mysql"]["connections_closed_broken"] >= 1


def test_connection_idle_past_ping_after_is_pinged_once():
    with freeze_time("2026-01-01 00:00:00") as frozen:
        pid = in_thread(wsgi_get, "/pid/default/")[1]
        frozen.tick(29)
        assert in_thread(wsgi_get, "/pid/default/")[1] == pid
        assert get_stats()["default"].get("checks_ping", 0) == 0
        frozen.tick(31)
        assert in_thread(wsgi_get, "/pid/default/")[1] == pid
        assert get_stats()["default"]["checks_ping"] == 1


def test_connection_whose_request_had_errors_is_pinged_before_reuse():
    pid = in_thread(wsgi_get, "/failed_query/default/")[1]
    assert in_thread(wsgi_get, "/pid/default/")[1] == pid
    assert in_thread(wsgi_get, "/pid/default/")[1] == pid
    assert get_stats()["default"]["checks_ping"] == 1


@override_settings(KEEPALIVE_HEALTH_CHECKS=False)
def test_without_health_checks_a_killed_session_is_handed_out():
    admin = pg_admin()
    in_thread(wsgi_get, "/pid/default/")
    pg_terminate_all(admin)
    wait_until(lambda: not pg_sessions(admin))
    assert in_thread(wsgi_get, "/pid/default/")[0] == 500  # what the checks prevent


@pytest.fixture
def proxy():
    port = int(settings.DATABASES["pg_proxy"]["PORT"])
    proxy = StallingProxy(int(settings.DATABASES["default"]["PORT"]), port)
    yield proxy
    proxy.close()


@override_settings(KEEPALIVE_PING_AFTER=0, KEEPALIVE_PING_TIMEOUT=0.5)
def test_ping_on_a_dead_network_gives_up_after_the_timeout(proxy):
    first = in_thread(wsgi_get, "/pid/pg_proxy/")[1]
    proxy.stall()
    started = time.monotonic()
    status, second = in_thread(wsgi_get, "/pid/pg_proxy/")
    assert status == 200 and second != first
    assert time.monotonic() - started < 5  # not the minutes a dead TCP peer can take
    stats = get_stats()["pg_proxy"]
    assert stats["checks_failed"] == 1 and stats["connections_closed_broken"] == 1
    connections["pg_proxy"].close()
