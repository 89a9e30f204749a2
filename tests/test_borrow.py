"""Release mode "transaction": sessions follow in-flight transactions, not in-flight requests.

Most tests run in both modes (``release_mode``): Django's ORM behaves the same, and where
the modes differ (sessions held while a request waits between two queries) both are
asserted.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, close_old_connections, connections, transaction
from django.db.utils import load_backend
from django.test import override_settings
from django.utils.functional import cached_property

import keepalive_mw
from keepalive_mw import borrow, checks, conf, get_stats
from keepalive_mw.pool import pool_for
from tests.helpers import (
    asgi_get,
    in_thread,
    pg_admin,
    pg_sessions,
    pg_sessions_gone,
    pg_terminate_all,
    wsgi_get,
)
from tests.test_hygiene import open_transactions, rows_by_name
from tests.testapp import views
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

TRANSACTION = "transaction"


@pytest.fixture(params=["request", TRANSACTION])
def release_mode(request):
    with override_settings(KEEPALIVE_RELEASE=request.param):
        yield request.param


@pytest.fixture
def pause_hook():
    """Set ``views.pause_hook`` for the test; always unset afterwards."""
    def set_hook(hook):
        views.pause_hook = hook

    yield set_hook
    views.pause_hook = None


def in_unit(fn, *args):
    """Run ``fn`` in a new thread, inside a unit of work (as a request would)."""
    return in_thread(lambda: keepalive_mw.scope()(fn)(*args))


def pid(alias="default"):
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def taken(alias="default"):
    """Sessions handed out so far (opened or reused)."""
    stats = get_stats().get(alias, {})
    return stats.get("connections_opened", 0) + stats.get("connections_reused", 0)


def in_use(alias="default"):
    """Kept connections handed out now (held by a thread or a front)."""
    pool = pool_for(alias)
    return pool.size - pool.idle_count()


def names():
    return dict((name, count) for name, count in
                ((n, Item.objects.filter(name=n).count())
                 for n in Item.objects.values_list("name", flat=True).distinct()))


# -- the ORM behaves the same ----------------------------------------------------------------


def test_select_for_update_holds_its_lock_on_one_session_to_the_end_of_atomic(release_mode):
    Item.objects.create(name="locked")
    locked, proceed = threading.Event(), threading.Event()

    def holder():
        with transaction.atomic():
            first = pid()
            list(Item.objects.select_for_update().filter(name="locked"))
            locked.set()
            assert proceed.wait(10)
            second = pid()
        return first, second, connections["default"].connection is None

    def other():
        try:
            with transaction.atomic():
                list(Item.objects.select_for_update(nowait=True).filter(name="locked"))
        except DatabaseError:
            return "blocked"
        return "locked it"

    with ThreadPoolExecutor(1) as executor:
        held = executor.submit(lambda: keepalive_mw.scope()(holder)())
        assert locked.wait(10)
        try:
            assert in_unit(other) == "blocked"
        finally:
            proceed.set()
        first, second, detached = held.result(10)
    assert first == second
    assert detached is (release_mode == TRANSACTION)  # given back at the block's end
    assert in_unit(other) == "locked it"


def test_iterator_keeps_its_server_side_cursor_on_one_session(release_mode):
    Item.objects.bulk_create(Item(name=f"i{n}") for n in range(5))

    def iterate():
        front = connections["default"]
        seen, pids, cursors = [], set(), []
        for item in Item.objects.order_by("pk").iterator(chunk_size=1):
            seen.append(item.name)
            pids.add(pid())
            with front.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_cursors")
                cursors.append(cursor.fetchone()[0])
        return seen, pids, cursors, front.connection is None

    seen, pids, cursors, detached = in_unit(iterate)
    assert seen == [f"i{n}" for n in range(5)]
    assert len(pids) == 1
    assert min(cursors) == 1  # the iterator's named cursor, in that very session
    assert detached is (release_mode == TRANSACTION)


def test_an_iterator_left_open_keeps_the_session_until_it_is_closed(release_mode):
    Item.objects.bulk_create(Item(name=f"i{n}") for n in range(3))

    def partly():
        front = connections["default"]
        rows = Item.objects.iterator(chunk_size=1)
        next(rows)
        held, first = front.connection is not None, pid()
        next(rows)
        same = pid() == first
        rows.close()
        return held, same, front.connection is None

    held, same, detached = in_unit(partly)
    assert held and same
    assert detached is (release_mode == TRANSACTION)


def test_bulk_create_savepoints_and_on_commit_behave_as_in_plain_django(release_mode):
    def work():
        calls = []
        created = Item.objects.bulk_create([Item(name="bulk") for _ in range(3)])
        with transaction.atomic():
            outer = pid()
            Item.objects.create(name="outer")
            transaction.on_commit(lambda: calls.append(
                ("committed", Item.objects.filter(name="inner-kept").count())))
            try:
                with transaction.atomic():
                    Item.objects.create(name="inner-rolled-back")
                    transaction.on_commit(lambda: calls.append("never"))
                    raise ValueError
            except ValueError:
                pass
            with transaction.atomic():
                Item.objects.create(name="inner-kept")
            inner = pid()
            before_commit = list(calls)
        checkouts = taken()
        transaction.on_commit(lambda: calls.append("at once"))  # no transaction: runs now
        borrowed_for_on_commit = taken() - checkouts
        return [o.pk for o in created], outer == inner, before_commit, calls, \
            borrowed_for_on_commit

    pks, same, before_commit, calls, borrowed = in_unit(work)
    assert all(pks) and len(set(pks)) == 3
    assert same and before_commit == []
    assert calls == [("committed", 1), "at once"]
    assert borrowed == 0
    assert names() == {"bulk": 3, "outer": 1, "inner-kept": 1}


def test_a_failed_statement_in_atomic_rolls_back_the_block_on_its_session(release_mode):
    from django.db import IntegrityError

    def work():
        item = Item.objects.create(name="unique")
        try:
            with transaction.atomic():
                Item.objects.create(name="lost")
                Item.objects.create(pk=item.pk, name="duplicate")
        except IntegrityError:
            pass
        return Item.objects.filter(name="lost").count()

    assert in_unit(work) == 0


def test_raw_begin_keeps_the_session_until_its_transaction_ends(release_mode):
    def work():
        front = connections["default"]
        with front.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("INSERT INTO testapp_item (name, created) VALUES ('raw', now())")
        first, held = pid(), front.connection is not None
        with front.cursor() as cursor:
            cursor.execute("COMMIT")
        return first == pid(), held, front.connection is None

    same, held, detached = in_unit(work)
    assert same and held
    assert detached is (release_mode == TRANSACTION)
    assert names() == {"raw": 1}


def test_closing_a_connection_inside_atomic_fails_the_block_as_in_django(release_mode):
    def work():
        with transaction.atomic():
            pid()
            connections["default"].close()
            with pytest.raises(DatabaseError):
                pid()
        return pid()  # a new session after the block

    assert in_unit(work)


def test_sqlite_behaves_the_same(release_mode):
    def work():
        items = Item.objects.using("sqlite")
        items.bulk_create([Item(name="a"), Item(name="b")])
        with transaction.atomic(using="sqlite"):
            items.create(name="c")
            raw = id(connections["sqlite"].connection)
            list(items.select_for_update())
            same = raw == id(connections["sqlite"].connection)
        return sorted(i.name for i in items.iterator(chunk_size=1)), same

    assert in_unit(work) == (["a", "b", "c"], True)
    assert (get_stats()["sqlite"]["connections_released"] > 0) is (release_mode == TRANSACTION)


# -- sessions follow transactions ------------------------------------------------------------


@pytest.mark.parametrize("get, view", [(wsgi_get, "pause"), (asgi_get, "apause")],
                         ids=["wsgi", "asgi"])
def test_requests_waiting_between_queries_hold_no_session(release_mode, get, view,
                                                          pause_hook):
    """N requests in flight at once, each between its two queries (a view awaiting another
    service): request mode holds N sessions, transaction mode none, and they all share one.
    Requests come one after the other, so that no two queries ever run at the same time."""
    n = 6
    admin = pg_admin()
    assert in_thread(get, f"/{view}/default/")[0] == 200  # one idle session in the pool
    before_sessions, before_in_use = len(pg_sessions(admin)), in_use()
    arrivals: queue.Queue = queue.Queue()

    def hook():
        proceed = threading.Event()
        arrivals.put(proceed)
        assert proceed.wait(30)

    pause_hook(hook)
    results, threads, paused = [], [], []
    for _ in range(n):
        thread = threading.Thread(target=lambda: results.append(get(f"/{view}/default/")))
        thread.start()
        threads.append(thread)
        paused.append(arrivals.get(timeout=30))
    held, sessions = in_use() - before_in_use, len(pg_sessions(admin))  # all n paused
    for proceed, thread in zip(paused, threads):
        proceed.set()
        thread.join(30)
    assert [status for status, _ in results] == [200] * n
    pids = {int(p) for _, body in results for p in body.split()}
    if release_mode == TRANSACTION:
        assert held == 0 and sessions == before_sessions and len(pids) == 1
    else:
        assert held == n and sessions == before_sessions + n - 1 and len(pids) == n


def test_an_atomic_block_keeps_its_session_while_it_waits(release_mode, pause_hook):
    """Concurrent requests paused inside atomic blocks: each keeps one session throughout."""
    n = 4
    barrier = threading.Barrier(n + 1, timeout=30)

    def hook():
        barrier.wait()  # all paused
        barrier.wait()  # the test has looked

    pause_hook(hook)
    before = in_use()
    with ThreadPoolExecutor(n) as executor:
        futures = [executor.submit(wsgi_get, "/pause_atomic/default/") for _ in range(n)]
        barrier.wait()
        held = in_use() - before
        barrier.wait()
        results = [future.result(30) for future in futures]
    assert [status for status, _ in results] == [200] * n
    for _, body in results:
        first, second = body.split()
        assert first == second
    assert held == n


def test_at_the_bound_waiting_requests_hold_no_slot(release_mode, pause_hook):
    """MAX_CONNECTIONS counts sessions, and in transaction mode a request waiting between
    its queries holds none: six requests in flight on two sessions all succeed."""
    n, bound = 6, 2
    close_old_connections()  # this thread holds nothing against the bound
    proceed = threading.Event()
    lock, paused = threading.Lock(), [0]

    def hook():
        with lock:
            paused[0] += 1
        assert proceed.wait(30)

    pause_hook(hook)
    with override_settings(KEEPALIVE_MAX_CONNECTIONS=bound, KEEPALIVE_WAIT_TIMEOUT=0.5):
        with ThreadPoolExecutor(n) as executor:
            futures = [executor.submit(wsgi_get, "/pause/default/") for _ in range(n)]
            deadline = time.monotonic() + 30
            # Every request paused, or failed at the bound.
            while paused[0] + sum(f.done() for f in futures) < n:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proceed.set()
            statuses = [future.result(30)[0] for future in futures]
    assert get_stats()["default"]["connections_peak"] <= bound
    if release_mode == TRANSACTION:
        assert statuses == [200] * n
    else:
        assert sorted(statuses) == [200] * bound + [500] * (n - bound)


def test_sessions_terminated_between_requests_fail_no_request(release_mode):
    admin = pg_admin()
    with ThreadPoolExecutor(4) as executor:
        list(executor.map(lambda _: wsgi_get("/pause/default/"), range(8)))
    killed = {p for p, _ in pg_sessions(admin)}
    assert pg_terminate_all(admin) >= 1
    assert pg_sessions_gone(admin, killed)
    with ThreadPoolExecutor(4) as executor:
        results = list(executor.map(lambda _: wsgi_get("/pause/default/"), range(20)))
        results += list(executor.map(lambda _: asgi_get("/apause/default/"), range(8)))
    assert [status for status, _ in results] == [200] * 28
    assert not killed & {int(p) for _, body in results for p in body.split()}


def test_a_session_terminated_between_two_transactions_of_a_request(release_mode,
                                                                    pause_hook):
    """Transaction mode checks the session again before the second query: the request
    survives what fails it in request mode."""
    admin = pg_admin()
    assert in_thread(wsgi_get, "/pid/default/")[0] == 200

    def terminate_all():
        killed = {p for p, _ in pg_sessions(admin)}
        pg_terminate_all(admin)
        assert pg_sessions_gone(admin, killed)

    pause_hook(terminate_all)
    status, body = in_thread(wsgi_get, "/pause/default/")
    if release_mode == TRANSACTION:
        first, second = body.split()
        assert status == 200 and first != second
    else:
        assert status == 500


def test_no_round_trip_is_added(release_mode, tmp_path):
    """libpq's own trace of the one kept session: one ReadyForQuery per statement the
    views ran, no ping, no reset, no BEGIN or COMMIT of keepalive_mw's."""
    from psycopg import pq

    assert in_thread(wsgi_get, "/pid/default/")[0] == 200
    pool = pool_for("default")
    (carrier,) = pool._idle
    trace = tmp_path / "libpq.trace"
    fd = os.open(trace, os.O_WRONLY | os.O_CREAT)
    carrier.connection.pgconn.trace(fd)
    carrier.connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
    try:
        for _ in range(5):
            assert in_thread(wsgi_get, "/pause/default/")[0] == 200  # 2 statements
            assert in_thread(wsgi_get, "/read/default/")[0] == 200  # 1 statement
    finally:
        carrier.connection.pgconn.untrace()
        os.close(fd)
    lines = trace.read_text().splitlines()
    ready = [line for line in lines if line.startswith("B") and "ReadyForQuery" in line]
    assert len(ready) == 15, lines
    assert get_stats()["default"]["checks_ping"] == 0


# -- hygiene -------------------------------------------------------------------------------


def test_autocommit_off_alias_is_released_per_request_and_stays_clean(release_mode):
    assert conf.config_for("pg_manual").transaction_release is False
    assert conf.config_for("default").transaction_release is (release_mode == TRANSACTION)
    paths = (["/write/pg_manual/"] * 10 + ["/fail/pg_manual/"] * 5
             + ["/read/pg_manual/"] * 5)
    with ThreadPoolExecutor(4) as executor:
        statuses = list(executor.map(lambda path: wsgi_get(path)[0], paths))
    assert statuses.count(200) == 15 and statuses.count(500) == 5
    assert rows_by_name("pg_manual") == {"write": 10}
    assert open_transactions("pg_manual") == 0


@pytest.mark.parametrize("get", [wsgi_get, asgi_get], ids=["wsgi", "asgi"])
def test_a_leaked_atomic_block_is_rolled_back_and_its_session_closed(release_mode, get):
    status, _ = in_thread(get, "/leak_atomic/default/")
    assert status == 200
    assert "leak_atomic" not in rows_by_name("default")
    assert open_transactions("default") == 0
    assert get_stats()["default"]["connections_closed_leaked_atomic"] == 1
    assert in_thread(get, "/pid/default/")[0] == 200


def test_a_raw_transaction_left_open_is_ended_with_the_request(release_mode):
    status, _ = in_thread(wsgi_get, "/raw_begin/default/")
    assert status == 200
    assert rows_by_name("default") == {"raw_begin": 1}  # committed: the request succeeded
    assert open_transactions("default") == 0


# -- what Django reads off a wrapper -----------------------------------------------------------


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_server_version_is_read_while_the_session_is_held():
    """Django's temporary_connection() reads connection.info after its cursor closed."""
    keepalive_mw.close_idle()  # fronts made anew: nothing cached on them yet

    def version():
        front = connections["default"]
        fresh = "pg_version" not in front.__dict__
        with front.temporary_connection() as cursor:
            cursor.execute("SELECT 1")
        info = front.connection is None
        return fresh, front.pg_version, info

    fresh, version_number, detached = in_unit(version)
    assert fresh and version_number >= 100000 and detached


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
@pytest.mark.parametrize("alias", ["default", "sqlite"])
def test_a_front_gets_what_a_connect_records_on_a_plain_wrapper(alias):
    """Attributes a backend's connect() sets on the wrapper reach the front that borrows
    the session (SESSION_ATTRIBUTES): compared with a plain wrapper of Django's."""
    db = connections.settings[alias]
    plain = load_backend(db["ENGINE"]).DatabaseWrapper(db, alias)
    fresh = set(plain.__dict__)
    plain.connect()
    cls = type(plain)
    recorded = {name for name in set(plain.__dict__) - fresh
                if not isinstance(getattr(cls, name, None), cached_property)}
    plain.close()

    def attached():
        front = connections[alias]
        front.ensure_connection()
        return borrow.is_front(front), {name: getattr(front, name, "missing")
                                        for name in recorded}, \
            {name: getattr(plain, name) for name in recorded}

    is_front, on_front, on_plain = in_unit(attached)
    assert is_front
    assert on_front == on_plain


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_sqlite_schema_editor_keeps_one_session_with_constraints_disabled():
    from django.db import models

    class Scratch(models.Model):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"
            db_table = "borrow_scratch"

    def edit():
        front = connections["sqlite"]
        with front.schema_editor() as editor:
            raw = front.connection
            editor.create_model(Scratch)
            same = front.connection is raw
            with front.cursor() as cursor:
                cursor.execute("PRAGMA foreign_keys")
                off = cursor.fetchone()[0] == 0
        with front.schema_editor() as editor:
            editor.delete_model(Scratch)
        return same, off, front.connection is None

    assert in_unit(edit) == (True, True, True)


# -- holding a session -------------------------------------------------------------------------


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_hold_session_keeps_session_state_for_its_block():
    def work():
        front = connections["default"]
        with keepalive_mw.hold_session():
            with front.cursor() as cursor:
                cursor.execute("SET statement_timeout = 4321")
            first = pid()
            with front.cursor() as cursor:
                cursor.execute("SHOW statement_timeout")
                timeout = cursor.fetchone()[0]
                cursor.execute("RESET statement_timeout")
            held = front.connection is not None
        return first == pid(), timeout, held, front.connection is None

    assert in_unit(work) == (True, "4321ms", True, True)


@override_settings(KEEPALIVE_RELEASE="request")
def test_hold_session_is_a_no_op_in_request_mode():
    def work():
        with keepalive_mw.hold_session():
            first = pid()
        return first == pid(), connections["default"].connection is not None

    assert in_unit(work) == (True, True)


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_outside_units_a_thread_keeps_its_session_until_close_old_connections():
    def outside():
        front = connections["default"]
        first = pid()
        held = front.connection is not None and pid() == first
        close_old_connections()
        return held, getattr(connections._connections, "default", None) is None

    assert in_thread(outside) == (True, True)


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_a_failed_query_outside_transactions_makes_the_session_checked_before_reuse():
    def work():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT * FROM no_such_table")
        except DatabaseError:
            pass
        return pid()

    in_unit(work)
    assert get_stats()["default"]["checks_ping"] == 1  # before the second query


# -- settings and checks -------------------------------------------------------------------------


def _databases(**entries):
    databases = copy.deepcopy(settings.DATABASES)
    for alias, changes in entries.items():
        databases[alias].update(changes)
    return databases


def test_an_invalid_release_mode_is_an_error():
    with override_settings(KEEPALIVE_RELEASE="query"):
        assert [m.id for m in checks.check_settings()] == ["keepalive_mw.E024"]
        with pytest.raises(ImproperlyConfigured, match="KEEPALIVE_RELEASE"):
            conf.config_for("default")
    with override_settings(DATABASES=_databases(default={"KEEPALIVE": {"RELEASE": 1}})):
        assert "keepalive_mw.E024" in [m.id for m in checks.check_databases()]


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_what_cannot_release_per_transaction_is_said_and_released_per_request():
    found = {(m.id, alias) for m in checks.check_databases()
             for alias in settings.DATABASES if repr(alias) in m.msg}
    assert ("keepalive_mw.E025", "mysql") in found
    assert ("keepalive_mw.E025", "mysql_manual") in found
    assert ("keepalive_mw.W016", "pg_manual") in found
    assert {id_ for id_, _ in found} == {"keepalive_mw.E025", "keepalive_mw.W016"}
    for alias in ("mysql", "mysql_manual", "pg_manual"):
        assert conf.config_for(alias).transaction_release is False
    for alias in ("default", "pg_proxy", "sqlite"):
        assert conf.config_for(alias).transaction_release is True


@override_settings(KEEPALIVE_RELEASE=TRANSACTION, KEEPALIVE_RESET_SESSION=True)
def test_reset_session_and_transaction_mode_exclude_each_other():
    ids = [m.id for m in checks.check_databases() if "'default'" in m.msg]
    assert "keepalive_mw.E026" in ids
    assert conf.config_for("default").transaction_release is False


def test_per_alias_release_mode_and_atomic_requests():
    databases = _databases(
        default={"KEEPALIVE": {"RELEASE": TRANSACTION}, "ATOMIC_REQUESTS": True},
        mysql={"KEEPALIVE": {"RELEASE": "request"}},
    )
    with override_settings(DATABASES=databases, KEEPALIVE_RELEASE="request"):
        messages = checks.check_databases()
        assert [m.id for m in messages] == ["keepalive_mw.W017"]
        assert 'DATABASES["default"]["KEEPALIVE"]["RELEASE"]' in messages[0].msg
        assert conf.config_for("default").transaction_release is True
        assert conf.config_for("sqlite").transaction_release is False
    with override_settings(KEEPALIVE_RELEASE=TRANSACTION,
                           DATABASES=_databases(mysql={"KEEPALIVE": {"RELEASE": "request"}},
                                                mysql_manual={"KEEPALIVE": False},
                                                pg_manual={"AUTOCOMMIT": True})):
        assert checks.check_databases() == []


@override_settings(KEEPALIVE_RELEASE=TRANSACTION)
def test_status_says_when_an_alias_is_released_per_request_anyway():
    from keepalive_mw import status

    said = "released per request"
    assert any(said in w for w in status.warnings("pg_manual", conf.config_for("pg_manual")))
    assert not any(said in w for w in status.warnings("default", conf.config_for("default")))
