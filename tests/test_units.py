"""Units of work outside requests: scopes adopt what the thread holds, and Django's own
close_old_connections() ends a thread's unit of work as closing the connection would."""

from __future__ import annotations

import logging
import threading

import pytest
from django.db import close_old_connections, connections, transaction
from django.test import override_settings
from freezegun import freeze_time

import keepalive_mw
from keepalive_mw import get_stats, housekeeper
from tests.helpers import in_thread, pg_admin, pg_sessions, pg_terminate_all
from tests.test_health import wait_until
from tests.test_hygiene import open_transactions, rows_by_name
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def backend_pid(alias: str = "default") -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


# -- scope() takes charge of wrappers that existed before it -------------------------------


def test_scope_takes_charge_of_wrappers_the_thread_created_before_it():
    """Celery's worker_process_init creates every wrapper (connections.all()) first."""

    def worker():
        connections.all()  # every alias's wrapper exists before any scope
        pids = set()
        for n in range(3):
            with keepalive_mw.scope():
                Item.objects.using("pg_manual").create(name="ok")
                pids.add(backend_pid("pg_manual"))
        with pytest.raises(RuntimeError), keepalive_mw.scope():
            Item.objects.using("pg_manual").create(name="bad")
            raise RuntimeError("the unit fails")
        return pids

    pids = in_thread(worker)
    assert rows_by_name("pg_manual") == {"ok": 3}
    assert open_transactions("pg_manual") == 0
    assert len(pids) == 1
    stats = get_stats()["pg_manual"]
    assert stats["transactions_committed"] == 3 and stats["transactions_rolled_back"] == 1
    assert stats["connections_opened"] == 1 and stats["connections_idle"] == 1


# -- close_old_connections() outside units --------------------------------------------------


def test_close_old_connections_ends_the_threads_unit_rolls_back_and_keeps_the_session():
    def worker():
        Item.objects.using("pg_manual").create(name="never committed")
        first = backend_pid("pg_manual")
        close_old_connections()
        given_back = "pg_manual" not in connections._connections.__dict__
        second = backend_pid("pg_manual")
        close_old_connections()
        return first, given_back, second

    first, given_back, second = in_thread(worker)
    assert given_back
    assert first == second  # the same session, from the pool
    assert rows_by_name("pg_manual") == {}  # rolled back, as plain Django's close() would
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["transactions_rolled_back"] == 2 and stats["connections_reused"] == 1


def test_a_thread_calling_close_old_connections_each_loop_survives_terminated_sessions():
    admin = pg_admin()
    terminated = threading.Event()
    looped = threading.Event()
    failures: list[BaseException] = []
    pids: list[int] = []

    def loop():
        for n in range(6):
            try:
                pids.append(backend_pid())
            except Exception as exc:  # noqa: BLE001 - what is counted
                failures.append(exc)
            close_old_connections()
            if n == 2:
                looped.set()
                terminated.wait(10)

    thread = threading.Thread(target=loop)
    thread.start()
    assert looped.wait(10)
    killed = {pid for pid, _ in pg_sessions(admin)}
    assert pg_terminate_all(admin) >= 1
    wait_until(lambda: not killed & {pid for pid, _ in pg_sessions(admin)})
    terminated.set()
    thread.join(10)
    assert failures == []
    assert len(pids) == 6 and pids[3] != pids[2] and len(set(pids[3:])) == 1
    assert get_stats()["default"]["checks_failed"] == 1


def test_inside_a_unit_close_old_connections_leaves_the_unit_in_charge():
    def worker():
        with keepalive_mw.scope():
            Item.objects.using("pg_manual").create(name="before")
            close_old_connections()
            Item.objects.using("pg_manual").create(name="after")

    in_thread(worker)
    assert rows_by_name("pg_manual") == {"before": 1, "after": 1}
    assert get_stats()["pg_manual"]["transactions_committed"] == 1


def test_a_wrapper_in_an_atomic_block_gets_djangos_own_rules():
    def worker():
        with transaction.atomic(using="default"):
            backend_pid()
            wrapper = connections["default"]
            close_old_connections()  # Django closes a connection inside atomic
            closed = wrapper.closed_in_transaction
            transaction.set_rollback(True, using="default")
        return closed, wrapper is connections["default"]

    closed, same_wrapper = in_thread(worker)
    assert closed and same_wrapper
    assert get_stats()["default"]["connections_idle"] == 0  # not given back


# -- connections held outside units: counted, aged, and warned about --------------------------


def test_connections_held_outside_units_are_counted_aged_and_reported_with_where(caplog):
    held = threading.Event()
    done = threading.Event()

    def hold_a_connection_outside_any_unit():
        backend_pid()
        held.set()
        done.wait(10)
        close_old_connections()

    close_old_connections()  # the test's own thread holds nothing outside units
    with override_settings(KEEPALIVE_LEAK_THRESHOLD=60), freeze_time("2026-01-01") as clock:
        thread = threading.Thread(target=hold_a_connection_outside_any_unit)
        thread.start()
        try:
            assert held.wait(10)
            clock.tick(30)
            housekeeper.run_once()
            stats = get_stats()["default"]
            assert stats["connections_unscoped"] == 1
            assert stats["connections_unscoped_age_ms"] == 30_000
            assert stats["leak_warnings"] == 0
            clock.tick(31)
            with caplog.at_level(logging.WARNING, logger="keepalive_mw"):
                housekeeper.run_once()
                housekeeper.run_once()  # once per hold
        finally:
            done.set()
            thread.join(10)
    warnings = [r for r in caplog.records if "held outside any request" in r.getMessage()]
    assert len(warnings) == 1
    assert "in hold_a_connection_outside_any_unit" in warnings[0].getMessage()
    stats = get_stats()["default"]
    assert stats["leak_warnings"] == 1
    assert stats["connections_unscoped"] == 0 and stats["connections_unscoped_age_ms"] == 0


def test_a_unit_adopting_a_connection_ends_its_unscoped_hold():
    close_old_connections()

    def worker():
        backend_pid()
        before = get_stats()["default"]["connections_unscoped"]
        with keepalive_mw.scope():
            during = get_stats()["default"]["connections_unscoped"]
        return before, during

    assert in_thread(worker) == (1, 0)
    assert get_stats()["default"]["connections_unscoped"] == 0


# -- when the end of a unit fails ----------------------------------------------------------------


def test_a_commit_that_fails_at_the_end_of_a_unit_is_logged_with_its_error(caplog):
    with connections["default"].cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS kamw_deferred (id int, CONSTRAINT "
                       "kamw_deferred_unique UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")

    def worker():
        with keepalive_mw.scope():
            with connections["pg_manual"].cursor() as cursor:
                cursor.execute("INSERT INTO kamw_deferred VALUES (1), (1)")  # checked at commit

    with caplog.at_level(logging.ERROR, logger="keepalive_mw"):
        in_thread(worker)
    (record,) = [r for r in caplog.records if "could not commit" in r.getMessage()]
    assert record.exc_info and "kamw_deferred_unique" in str(record.exc_info[1])
    assert get_stats()["pg_manual"]["connections_closed_errors"] == 1
    assert open_transactions("pg_manual") == 0


def test_a_rollback_on_a_session_the_server_ended_is_a_warning_without_traceback(caplog):
    admin = pg_admin()
    started, terminated = threading.Event(), threading.Event()

    def worker():
        with pytest.raises(RuntimeError), keepalive_mw.scope():
            Item.objects.using("pg_manual").create(name="lost anyway")
            started.set()
            terminated.wait(10)
            raise RuntimeError("the unit fails: its transaction is rolled back")

    thread = threading.Thread(target=worker)
    with caplog.at_level(logging.WARNING, logger="keepalive_mw"):
        thread.start()
        assert started.wait(10)
        killed = {pid for pid, _ in pg_sessions(admin)}
        pg_terminate_all(admin)
        wait_until(lambda: not killed & {pid for pid, _ in pg_sessions(admin)})
        terminated.set()
        thread.join(10)
    (record,) = [r for r in caplog.records if "could not clean up" in r.getMessage()]
    assert record.levelno == logging.WARNING and not record.exc_info
    assert get_stats()["pg_manual"]["connections_closed_errors"] == 1
    assert rows_by_name("pg_manual") == {}
