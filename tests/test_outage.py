"""A new connection the server cannot accept for now is retried within CONNECT_RETRY.

Real refusals from the servers (nothing listening, a role's or user's connection limit);
the backoff's clock and sleep are driven by the test, so nothing waits for real.
"""

from __future__ import annotations

import logging
import socket
from typing import Callable

import MySQLdb
import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from keepalive_mw import outage, scope
from keepalive_mw.stats import get_stats
from tests.helpers import asgi_get, in_thread, my_admin, pg_admin, pg_sessions_gone, wsgi_get
from tests.proxy import StallingProxy

LIMITED = "kamw_limited"

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


class DrivenClock:
    """outage's clock and sleep: a sleep advances the clock and may run the next step of
    the test's script (the server coming back, a slot freeing)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.steps: dict[int, Callable[[], None]] = {}  # sleep number (1-based) -> step

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        step = self.steps.get(len(self.sleeps))
        if step is not None:
            step()


@pytest.fixture
def clock(monkeypatch):
    clock = DrivenClock()
    monkeypatch.setattr(outage, "monotonic", clock.monotonic)
    monkeypatch.setattr(outage, "sleep", clock.sleep)
    yield clock
    for pool_alias in ("pg_proxy", "mysql"):
        from keepalive_mw.pool import pool_for

        pool_for(pool_alias).outage_since = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def proxies():
    started: list[StallingProxy] = []
    yield started
    for proxy in started:
        proxy.close()


def _pg_port() -> int:
    return int(settings.DATABASES["default"]["PORT"])


def _mysql_port() -> int:
    return int(settings.DATABASES["mysql"]["PORT"])


def _refusing(monkeypatch, alias: str) -> int:
    """Point ``alias`` at a port where nothing listens (yet); return the port."""
    port = free_port()
    monkeypatch.setitem(connections.settings[alias], "PORT", str(port))
    return port


@pytest.mark.parametrize("get", [wsgi_get, asgi_get], ids=["wsgi", "asgi"])
def test_a_refused_connect_waits_for_the_server(get, clock, proxies, monkeypatch, caplog):
    port = _refusing(monkeypatch, "pg_proxy")
    clock.steps[2] = lambda: proxies.append(StallingProxy(_pg_port(), port))
    with caplog.at_level(logging.WARNING, logger="keepalive_mw"):
        status, body = in_thread(get, "/pid/pg_proxy/")
    assert status == 200 and int(body) > 0
    stats = get_stats()["pg_proxy"]
    # attempt 1 refused, sleep 1, attempt 2 refused, sleep 2 (the server comes), attempt 3
    assert len(clock.sleeps) == 2 and stats["connections_retried"] == 2
    assert stats["connections_unavailable"] == 0 and stats["connections_opened"] == 1
    assert stats["connections_retry_wait_ms"] == int(sum(clock.sleeps) * 1000)
    warnings = [r.getMessage() for r in caplog.records if r.name == "keepalive_mw"]
    assert len(warnings) == 2, warnings
    assert "'pg_proxy' is unavailable (connection failed" in warnings[0]
    assert "Connection refused" in warnings[0] and "retried for up to 10.0 s" in warnings[0]
    assert "'pg_proxy' is available again" in warnings[1]


@override_settings(KEEPALIVE_CONNECT_RETRY=3)
def test_the_wait_is_bounded_and_the_outage_logged_once(clock, monkeypatch, caplog):
    _refusing(monkeypatch, "pg_proxy")
    held = get_stats()["pg_proxy"]["connections_num"]  # the test thread's own
    with caplog.at_level(logging.WARNING, logger="keepalive_mw"):
        first = in_thread(wsgi_get, "/pid/pg_proxy/")
        sleeps_of_first = list(clock.sleeps)
        second = in_thread(wsgi_get, "/pid/pg_proxy/")
    assert first[0] == second[0] == 500
    # Waited exactly the bound, never past it, in capped doubling steps with jitter.
    assert sum(sleeps_of_first) == pytest.approx(3.0)
    backoff = outage.BACKOFF_FIRST
    for wait in sleeps_of_first[:-1]:
        assert backoff / 2 <= wait <= backoff
        backoff = min(outage.BACKOFF_CAP, backoff * 2)
    assert max(sleeps_of_first) <= outage.BACKOFF_CAP
    stats = get_stats()["pg_proxy"]
    assert stats["connections_unavailable"] == 2
    assert stats["connections_retried"] == len(clock.sleeps)
    assert stats["connections_num"] == held  # the failed wrappers' slots are free
    ours = [r.getMessage()[:40] for r in caplog.records if r.name == "keepalive_mw"]
    assert ours == ["database alias 'pg_proxy' is unavailable"]


@override_settings(KEEPALIVE_CONNECT_RETRY=0)
def test_zero_turns_retrying_off(clock, monkeypatch):
    _refusing(monkeypatch, "pg_proxy")
    assert in_thread(wsgi_get, "/pid/pg_proxy/")[0] == 500
    assert clock.sleeps == [] and get_stats()["pg_proxy"]["connections_retried"] == 0


@pytest.fixture
def pg_limited_role():
    """A role allowed one connection (superusers have no limit), for "too many connections"."""
    admin = pg_admin()
    admin.execute(f"DROP ROLE IF EXISTS {LIMITED}")
    admin.execute(f"CREATE ROLE {LIMITED} LOGIN CONNECTION LIMIT 1")
    yield admin
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                  [LIMITED])
    admin.execute(f"DROP ROLE IF EXISTS {LIMITED}")
    admin.close()


def test_too_many_connections_waits_for_a_free_slot(clock, proxies, monkeypatch,
                                                   pg_limited_role):
    import psycopg

    proxies.append(StallingProxy(_pg_port(), int(settings.DATABASES["pg_proxy"]["PORT"])))
    monkeypatch.setitem(connections.settings["pg_proxy"], "USER", LIMITED)
    name = connections.settings["pg_proxy"]["NAME"]
    blocker = psycopg.connect(host="127.0.0.1", port=_pg_port(), user=LIMITED, dbname=name)
    blocker_pid = blocker.info.backend_pid

    def free_the_slot():
        blocker.close()
        assert pg_sessions_gone(pg_limited_role, {blocker_pid})

    clock.steps[1] = free_the_slot
    status, body = in_thread(wsgi_get, "/pid/pg_proxy/")
    assert status == 200 and int(body) != blocker_pid
    assert get_stats()["pg_proxy"]["connections_retried"] == 1


@pytest.fixture
def mysql_limited_user():
    admin = my_admin()
    name = connections.settings["mysql"]["NAME"]
    with admin.cursor() as cursor:
        cursor.execute(f"DROP USER IF EXISTS '{LIMITED}'@'%'")
        cursor.execute(f"CREATE USER '{LIMITED}'@'%' WITH MAX_USER_CONNECTIONS 1")
        cursor.execute(f"GRANT ALL ON `{name}`.* TO '{LIMITED}'@'%'")
    yield
    with admin.cursor() as cursor:
        cursor.execute(f"DROP USER IF EXISTS '{LIMITED}'@'%'")
    admin.close()


def test_mysql_too_many_connections_waits_for_a_free_slot(clock, monkeypatch,
                                                         mysql_limited_user):
    monkeypatch.setitem(connections.settings["mysql"], "USER", LIMITED)
    name = connections.settings["mysql"]["NAME"]
    blocker = MySQLdb.connect(host="127.0.0.1", port=_mysql_port(), user=LIMITED, db=name)
    blocker_id = blocker.thread_id()
    clock.steps[1] = blocker.close  # MariaDB frees the slot as the client hangs up
    status, body = in_thread(wsgi_get, "/pid/mysql/")
    assert status == 200 and int(body) != blocker_id
    assert get_stats()["mysql"]["connections_retried"] >= 1


def test_mysql_refused_connect_waits_for_the_server(clock, proxies, monkeypatch):
    server_port = _mysql_port()
    port = _refusing(monkeypatch, "mysql")
    clock.steps[1] = lambda: proxies.append(StallingProxy(server_port, port))
    status, body = in_thread(wsgi_get, "/pid/mysql/")
    assert status == 200 and int(body) > 0
    assert get_stats()["mysql"]["connections_retried"] == 1


@pytest.mark.parametrize("alias, key, value", [
    ("pg_proxy", "NAME", "kamw_no_such_database"),
    ("pg_proxy", "USER", "kamw_no_such_role"),
    ("mysql", "PASSWORD", "wrong"),
])
def test_other_connect_errors_fail_at_once(alias, key, value, clock, proxies, monkeypatch):
    if alias == "pg_proxy":
        proxies.append(StallingProxy(_pg_port(), int(settings.DATABASES["pg_proxy"]["PORT"])))
    monkeypatch.setitem(connections.settings[alias], key, value)
    assert in_thread(wsgi_get, f"/pid/{alias}/")[0] == 500
    assert clock.sleeps == [] and get_stats()[alias]["connections_retried"] == 0


def test_a_statement_is_never_retried(clock):
    """Only the connect is retried: a statement whose session ends fails as it did."""
    from django.db import OperationalError

    def terminate_own_session():
        with scope():
            with connections["default"].cursor() as cursor:
                with pytest.raises(OperationalError, match="administrator command"):
                    cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    in_thread(terminate_own_session)
    assert clock.sleeps == [] and get_stats()["default"]["connections_retried"] == 0
    # Its message is one of the retried ones: only where it happened kept it from a retry.
    assert outage.unavailable(
        Exception("terminating connection due to administrator command"), "postgresql")


@pytest.mark.parametrize("message, retried", [
    ('connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: '
     "No such file or directory", True),
    ("FATAL:  the database system is starting up", True),
    ("FATAL:  the database system is shutting down", True),
    ("FATAL:  the database system is not yet accepting connections", True),
    ("FATAL:  sorry, too many clients already", True),
    ("FATAL:  remaining connection slots are reserved for roles with the SUPERUSER attribute",
     True),
    ("server closed the connection unexpectedly", True),
    ("ERROR:  no more connections allowed (max_client_conn)", True),
    ("ERROR:  pgbouncer cannot connect to server", True),
    ('FATAL:  password authentication failed for user "app"', False),
    ('FATAL:  database "app" does not exist', False),
    ('could not translate host name "db" to address: Name or service not known', False),
    ('FATAL:  no pg_hba.conf entry for host "10.0.0.1"', False),
])
def test_postgresql_messages(message, retried):
    assert outage.unavailable(Exception(message), "postgresql") is retried


@pytest.mark.parametrize("code, retried", [
    (2002, True), (2003, True), (2006, True), (2013, True), (1040, True), (1203, True),
    (1226, True), (1053, True), (1045, False), (1049, False), (1064, False),
])
def test_mysql_codes(code, retried):
    assert outage.unavailable(MySQLdb.OperationalError(code, "message"), "mysql") is retried
    assert not outage.unavailable(MySQLdb.OperationalError(code, "message"), "sqlite")


@override_settings(KEEPALIVE_PROMETHEUS=True, KEEPALIVE_CONNECT_RETRY=1)
def test_retries_are_exported_as_metrics(clock, monkeypatch):
    from prometheus_client import REGISTRY, generate_latest

    from keepalive_mw import metrics
    from tests.test_metrics import samples

    labels = (("alias", "pg_proxy"), ("vendor", "postgresql"))
    names = ("django_keepalive_connections_retried_total",
             "django_keepalive_connections_retry_wait_seconds_total",
             "django_keepalive_connections_unavailable_total")
    metrics.sync()
    before = samples(generate_latest(REGISTRY).decode())
    _refusing(monkeypatch, "pg_proxy")
    assert in_thread(wsgi_get, "/pid/pg_proxy/")[0] == 500
    metrics.sync()
    after = samples(generate_latest(REGISTRY).decode())
    retried, waited, given_up = (after[(n, labels)] - before.get((n, labels), 0) for n in names)
    assert (retried, given_up) == (len(clock.sleeps), 1)
    assert waited == pytest.approx(1.0, abs=0.002)
