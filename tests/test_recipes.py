"""Recipes for job frameworks that call Django's close_old_connections() between jobs.

Dramatiq (with django_dramatiq's DbConnectionsMiddleware), Huey (djhuey's db_task) and
Django-Q2, through their own worker code, in process, against PostgreSQL. Without any code
each job reuses a kept connection and what it left open is rolled back, as plain Django
would; the recipes in tests/testapp/recipes_*.py (the README's code) make each job a unit of
work that commits on success. Every job writes on ``pg_manual`` (AUTOCOMMIT off).
"""

from __future__ import annotations

import threading
import warnings
from multiprocessing import Value

import dramatiq
import pytest
from django.conf import settings
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from django_dramatiq.middleware import DbConnectionsMiddleware
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Callbacks, Retries, TimeLimit
from huey import MemoryHuey
from huey import signals as huey_signals

import keepalive_mw
from keepalive_mw import get_stats
from tests.helpers import in_thread, pg_admin, pg_sessions
from tests.test_health import wait_until
from tests.test_hygiene import open_transactions, rows_by_name
from tests.testapp.models import Item
from tests.testapp.recipes_dramatiq import KeepAliveUnits as DramatiqUnits
from tests.testapp.recipes_huey import KeepAliveUnits as HueyUnits
from tests.testapp.recipes_tasks import PIDS, insert, no_database

# djhuey reads settings.HUEY once, when it is first imported.
with override_settings(HUEY=MemoryHuey("keepalive_mw_recipes", immediate=False)):
    from huey.contrib import djhuey

# Django-Q2's worker module imports its models (through django_q.signals): django_q must be
# an installed app while it is imported. Its tables are not needed, the worker does not
# touch them (the monitor, not run here, stores results). Without Q_CLUSTER, Django-Q2 warns
# that its default retry and (absent) timeout do not fit: not this module's concern.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Retry and timeout are misconfigured", UserWarning)
    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "django_q"]):
        from django_q.humanhash import uuid as djq_uuid
        from django_q.queues import Queue as DjqQueue
        from django_q.signals import post_execute_in_worker, pre_execute
        from django_q.signing import SignedPackage
        from django_q.worker import worker as djq_worker

        from tests.testapp import recipes_django_q

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

# Five jobs that succeed and three that fail after their write, interleaved.
JOBS = [("ok", False), ("bad", True), ("ok", False), ("bad", True), ("ok", False),
        ("bad", True), ("ok", False), ("ok", False)]
TIMEOUT = 20  # seconds; every wait is bounded


@pytest.fixture(autouse=True)
def _pids_and_no_leftover_transaction():
    PIDS.clear()
    yield
    PIDS.clear()
    # After the frameworks' fixtures stopped their workers. A test that failed half-way may
    # leave a session idle in transaction holding a lock on testapp_item, on which the
    # database flush after the test would wait for ever: end such sessions.
    admin = pg_admin()
    stuck = [pid for pid, state in pg_sessions(admin) if state.startswith("idle in transaction")]
    if stuck:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [stuck])
    admin.close()


def assert_one_session_no_open_transaction(jobs: int) -> None:
    assert len(PIDS) == jobs and len(set(PIDS)) == 1
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["connections_opened"] == 1 and stats["connections_reused"] == jobs - 1


def terminate_job_sessions() -> None:
    """pg_terminate_backend() the sessions the jobs used; wait until they are gone."""
    admin = pg_admin()
    used = sorted(set(PIDS))
    admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [used])
    wait_until(lambda: not set(used) & {pid for pid, _ in pg_sessions(admin)})
    admin.close()


# -- Dramatiq ------------------------------------------------------------------------------


@pytest.fixture
def dramatiq_worker():
    """A StubBroker with django_dramatiq's default middleware (less Prometheus and the admin's
    AdminMiddleware, whose models are not installed) and a real Worker on worker threads."""
    workers = []

    def start(recipe=None, threads=1):
        middleware = [AgeLimit(), TimeLimit(), Callbacks(), Retries(), DbConnectionsMiddleware()]
        if recipe == "last":
            middleware.append(DramatiqUnits())
        elif recipe == "first":
            middleware.insert(0, DramatiqUnits())
        broker = StubBroker(middleware=middleware)
        actor = dramatiq.actor(insert, broker=broker, actor_name="recipes_insert", max_retries=0)
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=50)
        worker.start()
        workers.append(worker)

        def run(jobs):
            for name, fail in jobs:
                actor.send(name, fail)
            broker.join(actor.queue_name, timeout=TIMEOUT * 1000, fail_fast=False)

        return broker, actor, run

    yield start
    for worker in workers:
        worker.stop(timeout=TIMEOUT * 1000)
        assert not any(thread.is_alive() for thread in [*worker.workers,
                                                         *worker.consumers.values()])


def test_dramatiq_without_recipe_reuses_one_session_and_rolls_back_as_django_would(
        dramatiq_worker):
    broker, actor, run = dramatiq_worker()
    run(JOBS)
    assert rows_by_name("pg_manual") == {}  # rolled back, as closing would in plain Django
    assert_one_session_no_open_transaction(len(JOBS))
    stats = get_stats()["pg_manual"]
    assert stats["transactions_rolled_back"] == 8 and stats["transactions_committed"] == 0
    assert len(broker.dead_letters) == 3  # the failing actors, and only them


@pytest.mark.parametrize("position", ["last", "first"])
def test_dramatiq_recipe_commits_successes_and_rolls_back_failures(dramatiq_worker, position):
    broker, actor, run = dramatiq_worker(recipe=position)
    run(JOBS)
    assert rows_by_name("pg_manual") == {"ok": 5}
    assert_one_session_no_open_transaction(len(JOBS))
    stats = get_stats()["pg_manual"]
    assert stats["transactions_committed"] == 5 and stats["transactions_rolled_back"] == 3


def test_dramatiq_recipe_on_four_worker_threads(dramatiq_worker):
    broker, actor, run = dramatiq_worker(recipe="last", threads=4)
    run(JOBS * 5)
    assert rows_by_name("pg_manual") == {"ok": 25}
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["transactions_committed"] == 25 and stats["transactions_rolled_back"] == 15
    assert 1 <= stats["connections_opened"] <= 4 and len(set(PIDS)) <= 4


@pytest.mark.parametrize("recipe", [None, "last"], ids=["no_recipe", "recipe"])
def test_dramatiq_messages_after_terminated_sessions_do_not_fail(dramatiq_worker, recipe):
    broker, actor, run = dramatiq_worker(recipe=recipe)
    run([("ok", False)] * 3)
    terminate_job_sessions()
    run([("ok", False)] * 3)
    assert broker.dead_letters == []  # no message failed
    assert len(set(PIDS[:3])) == 1 and len(set(PIDS[3:])) == 1 and PIDS[3] != PIDS[0]
    assert rows_by_name("pg_manual") == ({"ok": 6} if recipe else {})
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["checks_failed"] == 1 and stats["connections_opened"] == 2


def test_dramatiq_recipe_ends_the_unit_of_a_skipped_message(dramatiq_worker):
    """Listed before AgeLimit, the recipe has started a unit when AgeLimit skips a message."""
    broker, actor, run = dramatiq_worker(recipe="first")
    old = actor.message_with_options(args=("too old", False), max_age=60_000)
    broker.enqueue(old.copy(message_timestamp=old.message_timestamp - 3_600_000))
    run([("ok", False)] * 2)
    assert len(PIDS) == 2  # the old message's actor never ran
    assert rows_by_name("pg_manual") == {"ok": 2}  # later messages were units of their own
    assert open_transactions("pg_manual") == 0


# -- Huey ------------------------------------------------------------------------------------

HUEY = djhuey.HUEY


@djhuey.db_task()
def huey_insert(name, fail=False):
    insert(name, fail)


class Ended:
    """Counts tasks that completed or raised; connected after the recipe, so runs after it."""

    def __init__(self) -> None:
        self.count = 0
        self.changed = threading.Condition()

    def __call__(self, signal, task, *args):
        if signal in (huey_signals.SIGNAL_COMPLETE, huey_signals.SIGNAL_ERROR):
            with self.changed:
                self.count += 1
                self.changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count >= count, TIMEOUT)


@pytest.fixture
def huey_consumer(monkeypatch):
    """djhuey's HUEY (a MemoryHuey, immediate off) run by Huey's own consumer: one worker
    thread executing tasks through huey.execute(), db_task's close_db around each."""
    assert isinstance(HUEY, MemoryHuey) and not HUEY.immediate, (
        "huey.contrib.djhuey was imported before this module set settings.HUEY")
    HUEY.flush()
    receivers = []
    consumers = []

    def start(recipe=False, consumer=True):
        if recipe:
            receivers.append(HUEY.signal()(HueyUnits(HUEY)))
        ended = HUEY.signal()(Ended())
        receivers.append(ended)
        if consumer:
            running = HUEY.create_consumer(
                workers=1, worker_type="thread", periodic=False, check_worker_health=False,
                initial_delay=0.01, max_delay=0.05, shutdown_timeout=TIMEOUT)
            # Consumer.start() sets SIGINT/SIGTERM/SIGHUP handlers: not in pytest's process.
            monkeypatch.setattr(running, "_set_signal_handlers", lambda: None)
            running.start()
            consumers.append(running)

        def run(jobs):
            target = ended.count + len(jobs)
            for name, fail in jobs:
                huey_insert(name, fail)
            ended.wait_for(target)

        return run

    yield start
    for running in consumers:
        running.stop(graceful=True)
        threads = [thread for _, thread in running.worker_threads] + [running.scheduler]
        assert not any(thread.is_alive() for thread in threads)
    for receiver in receivers:
        HUEY.disconnect_signal(receiver)
    HUEY.flush()


def test_huey_without_recipe_reuses_one_session_and_rolls_back_as_django_would(
        huey_consumer):
    run = huey_consumer()
    run(JOBS)
    assert rows_by_name("pg_manual") == {}
    assert_one_session_no_open_transaction(len(JOBS))
    stats = get_stats()["pg_manual"]
    assert stats["transactions_rolled_back"] == 8 and stats["transactions_committed"] == 0


def test_huey_recipe_commits_successes_and_rolls_back_failures(huey_consumer):
    run = huey_consumer(recipe=True)
    run(JOBS)
    assert rows_by_name("pg_manual") == {"ok": 5}
    assert_one_session_no_open_transaction(len(JOBS))
    stats = get_stats()["pg_manual"]
    assert stats["transactions_committed"] == 5 and stats["transactions_rolled_back"] == 3


@pytest.mark.parametrize("recipe", [False, True], ids=["no_recipe", "recipe"])
def test_huey_tasks_after_terminated_sessions_do_not_fail(huey_consumer, recipe):
    errors = []
    failed = HUEY.signal(huey_signals.SIGNAL_ERROR)(lambda signal, task, exc: errors.append(exc))
    try:
        run = huey_consumer(recipe=recipe)
        run([("ok", False)] * 3)
        terminate_job_sessions()
        run([("ok", False)] * 3)
    finally:
        HUEY.disconnect_signal(failed)
    assert errors == []
    assert len(set(PIDS[:3])) == 1 and len(set(PIDS[3:])) == 1 and PIDS[3] != PIDS[0]
    assert rows_by_name("pg_manual") == ({"ok": 6} if recipe else {})
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["checks_failed"] == 1 and stats["connections_opened"] == 2


def test_huey_recipe_rolls_back_a_task_whose_end_signal_never_came(huey_consumer, monkeypatch):
    """Huey's storage fails after the task ran (no SIGNAL_COMPLETE): the next task ends that
    unit, as a failure, instead of running inside it."""
    failures = iter([ConnectionError("storage unavailable")])
    delete = HUEY.delete

    def flaky_delete(key):
        exc = next(failures, None)
        if exc is not None:
            raise exc
        return delete(key)

    monkeypatch.setattr(HUEY, "delete", flaky_delete)
    run = huey_consumer(recipe=True)
    huey_insert("result lost", False)  # never signals its end
    run([("ok", False)] * 2)
    assert len(PIDS) == 3 and len(set(PIDS)) == 1
    assert rows_by_name("pg_manual") == {"ok": 2}
    assert open_transactions("pg_manual") == 0


def test_huey_immediate_tasks_are_left_to_their_caller(huey_consumer, monkeypatch):
    """immediate=True: the task runs in its caller, close_db leaves connections alone, and
    so does the recipe: the caller's unit (or its own code) ends the transaction."""
    huey_consumer(recipe=True, consumer=False)
    monkeypatch.setattr(HUEY, "immediate", True)

    def caller():
        with keepalive_mw.scope():
            Item.objects.using("pg_manual").create(name="scope")
            huey_insert("task in scope", False)
        Item.objects.using("pg_manual").create(name="caller")
        huey_insert("task outside units", False)
        close_old_connections()  # the caller's work ends: rolled back, as in plain Django

    in_thread(caller)
    assert rows_by_name("pg_manual") == {"scope": 1, "task in scope": 1}
    assert open_transactions("pg_manual") == 0


# -- Django-Q2 ---------------------------------------------------------------------------------


def djq_task(func, *args, **options):
    """A task as async_task() builds it and the pusher hands it to a worker."""
    tag = djq_uuid()
    task = {"id": tag[1], "name": tag[0], "func": func, "args": args, "kwargs": {},
            "started": timezone.now(), **options}
    return SignedPackage.loads(SignedPackage.dumps(task))


@pytest.fixture
def djq_worker_thread():
    """django_q.worker.worker() on a thread, fed and read through Django-Q2's queues, as a
    cluster's worker process is."""
    running = []

    def start(recipe=False):
        if recipe:
            recipes_django_q.connect()
        tasks, results = DjqQueue(), DjqQueue()
        thread = threading.Thread(target=djq_worker, args=(tasks, results, Value("f", -1)),
                                  name="django-q-worker")
        thread.start()
        running.append((thread, tasks, results))

        def run(jobs):
            for name, fail in jobs:
                tasks.put(djq_task(insert, name, fail))
            return [results.get(timeout=TIMEOUT)["success"] for _ in jobs]

        def run_no_database_task():
            tasks.put(djq_task(no_database))
            assert results.get(timeout=TIMEOUT)["success"]

        return run, run_no_database_task

    yield start
    for thread, tasks, results in running:
        tasks.put("STOP")
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        for queue in (tasks, results):
            queue.close()
            queue.join_thread()
    pre_execute.disconnect(dispatch_uid="keepalive_mw")
    post_execute_in_worker.disconnect(dispatch_uid="keepalive_mw")


def test_django_q_without_recipe_reuses_one_session_and_rolls_back_at_the_next_task(
        djq_worker_thread):
    run, run_no_database_task = djq_worker_thread()
    assert run(JOBS) == [not fail for _, fail in JOBS]
    assert len(PIDS) == 8 and len(set(PIDS)) == 1
    # The worker calls close_old_connections() before each task, not after: the last task's
    # transaction stays open on the idle worker until its next task, as in plain Django.
    assert open_transactions("pg_manual") == 1
    run_no_database_task()
    assert open_transactions("pg_manual") == 0
    assert rows_by_name("pg_manual") == {}
    stats = get_stats()["pg_manual"]
    assert stats["connections_opened"] == 1 and stats["connections_reused"] == 7
    assert stats["transactions_rolled_back"] == 8 and stats["transactions_committed"] == 0


def test_django_q_recipe_commits_successes_and_rolls_back_failures(djq_worker_thread):
    run, _ = djq_worker_thread(recipe=True)
    assert run(JOBS) == [not fail for _, fail in JOBS]
    assert rows_by_name("pg_manual") == {"ok": 5}
    assert_one_session_no_open_transaction(len(JOBS))  # at once, not at the next task
    stats = get_stats()["pg_manual"]
    assert stats["transactions_committed"] == 5 and stats["transactions_rolled_back"] == 3


def test_django_q_recipe_tasks_after_terminated_sessions_do_not_fail(djq_worker_thread):
    run, _ = djq_worker_thread(recipe=True)
    assert run([("ok", False)] * 3) == [True] * 3
    terminate_job_sessions()
    assert run([("ok", False)] * 3) == [True] * 3
    assert len(set(PIDS[:3])) == 1 and len(set(PIDS[3:])) == 1 and PIDS[3] != PIDS[0]
    assert rows_by_name("pg_manual") == {"ok": 6}
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["checks_failed"] == 1 and stats["connections_opened"] == 2


def test_django_q_without_recipe_a_session_terminated_while_held_costs_its_transaction(
        djq_worker_thread, caplog):
    """Without the recipe the worker still holds the last task's connection when it is
    terminated: no check comes before the next task's close_old_connections(), whose
    rollback fails (logged); the task then takes a new connection and does not fail."""
    run, run_no_database_task = djq_worker_thread()
    assert run([("ok", False)] * 3) == [True] * 3
    terminate_job_sessions()
    assert run([("ok", False)] * 3) == [True] * 3
    run_no_database_task()
    assert len(set(PIDS[:3])) == 1 and len(set(PIDS[3:])) == 1 and PIDS[3] != PIDS[0]
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0
    assert any("could not clean up a connection" in record.getMessage()
               for record in caplog.records)
    stats = get_stats()["pg_manual"]
    assert stats["checks_failed"] == 0 and stats["connections_opened"] == 2


def test_django_q_sync_tasks_are_left_to_their_caller(djq_worker_thread):
    """sync=True (async_task's _sync): the worker loop runs on the caller's thread, without
    close_old_connections; the recipe stays out too, and a failing task's own error
    surfaces (its post_execute_in_worker comes before task["success"] is set)."""
    djq_worker_thread(recipe=True)  # connects the recipe; its worker thread stays idle

    def run_sync(name, fail=False):
        tasks, results = DjqQueue(), DjqQueue()
        tasks.put(djq_task(insert, name, fail, sync=True))
        tasks.put("STOP")
        try:
            djq_worker(tasks, results, Value("f", -1))
            return results.get(timeout=TIMEOUT)["success"]
        finally:
            for queue in (tasks, results):
                queue.close()
                queue.join_thread()

    def caller():
        with keepalive_mw.scope():
            Item.objects.using("pg_manual").create(name="scope")
            assert run_sync("task in scope")
        Item.objects.using("pg_manual").create(name="caller")
        assert run_sync("task outside units")
        with pytest.raises(RuntimeError, match="fails after its write"):
            run_sync("failing task", fail=True)
        close_old_connections()  # the caller's work ends: rolled back, as in plain Django

    in_thread(caller)
    assert rows_by_name("pg_manual") == {"scope": 1, "task in scope": 1}
    assert open_transactions("pg_manual") == 0
