"""Celery tasks, Channels' database_sync_to_async calls and Django tasks are units of work.

In process, through the frameworks' real code: Celery's tracer and Django fixup, asgiref's
executor behind database_sync_to_async, and the tasks framework's immediate backend. Real
worker processes and servers are exercised in tests/integration.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from celery import Celery, signals
from celery.app.trace import build_tracer
from celery.fixups.django import DjangoWorkerFixup
from channels.db import database_sync_to_async
from django.db import close_old_connections, connections
from django.test import override_settings

import keepalive_mw
from keepalive_mw import get_stats
from tests.helpers import in_thread, pg_admin, pg_sessions
from tests.test_health import wait_until
from tests.test_hygiene import open_transactions, rows_by_name
from tests.testapp.models import Item

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def insert(alias: str, name: str, fail: bool = False) -> None:
    Item.objects.using(alias).create(name=name)
    if fail:
        raise RuntimeError("fails after its write")


# -- Celery -------------------------------------------------------------------------------


@pytest.fixture
def celery_worker_thread():
    """Run tasks as a Celery worker does: the real tracer, with Django's worker fixup.

    This process imported Celery after Django's set-up (a worker imports it before), so the
    integration is wired here as a worker wires it at start-up.
    """
    from keepalive_mw.integrations import celery as integration

    integration.install()
    integration.adjust_fixup()
    app = Celery("keepalive_mw_tests", set_as_current=False)
    app.conf.update(broker_url="memory://", task_ignore_result=True)
    task = app.task(name="tests.insert")(insert)
    fixup = DjangoWorkerFixup(app).install()
    tracer = build_tracer(task.name, task, app=app, eager=False, propagate=False)

    def run(*args):
        task_id = str(uuid.uuid4())
        return tracer(task_id, list(args), {}, {"id": task_id, "delivery_info": {}})

    yield task, run
    for signal, receiver in ((signals.task_prerun, fixup.on_task_prerun),
                             (signals.task_postrun, fixup.on_task_postrun),
                             (signals.worker_process_init, fixup.on_worker_process_init),
                             (signals.beat_embedded_init, fixup.close_database)):
        signal.disconnect(receiver)


def test_celery_tasks_commit_on_success_roll_back_on_failure_and_reuse(celery_worker_thread):
    task, run = celery_worker_thread

    def worker():
        connections.all()  # as worker_process_init does, before any task
        for n in range(5):
            run("pg_manual", "ok")
        for n in range(3):
            run("pg_manual", "bad", True)

    in_thread(worker)
    assert rows_by_name("pg_manual") == {"ok": 5}
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["connections_opened"] == 1  # the fixup's per-task close spared it
    assert stats["transactions_committed"] == 5 and stats["transactions_rolled_back"] == 3


def test_celery_eager_tasks_belong_to_their_caller(celery_worker_thread):
    task, run = celery_worker_thread

    def caller():
        task.apply(args=("pg_manual", "eager"))
        still_open = open_transactions("pg_manual")  # the caller's transaction, not ended
        close_old_connections()  # the caller ends its unit: rolled back
        return still_open

    assert in_thread(caller) == 1
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0


@override_settings(KEEPALIVE_CELERY=False)
def test_celery_integration_switched_off_leaves_the_fixup_alone(celery_worker_thread):
    task, run = celery_worker_thread
    in_thread(lambda: [run("default", "ok") for _ in range(3)])
    assert get_stats()["default"]["connections_opened"] == 3  # closed before every task


def test_celery_worker_shutdown_closes_kept_connections(celery_worker_thread):
    admin = pg_admin()

    def child():
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            pid = cursor.fetchone()[0]
        signals.worker_process_shutdown.send(sender=None, pid=0, exitcode=0)
        return pid, "default" in connections._connections.__dict__

    pid, still_held = in_thread(child)
    assert not still_held
    wait_until(lambda: pid not in {session for session, _ in pg_sessions(admin)})
    assert get_stats()["default"]["connections_idle"] == 0


def test_a_process_that_does_not_import_celery_pays_nothing_for_it():
    """Django's set-up neither imports Celery nor wires it; a worker imports Celery first."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    def run(script):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True, timeout=60, env=env,
                              cwd=Path(__file__).resolve().parents[1]).stdout.split()

    assert run("import sys, django; django.setup(); print('celery' in sys.modules)") == [
        "False"]
    assert run("import celery, django; django.setup(); from celery import signals; "
               "print(len(signals.task_prerun.receivers))") == ["1"]


# -- Channels ------------------------------------------------------------------------------


def test_database_sync_to_async_calls_commit_or_roll_back_each_and_reuse():
    async def consumer():
        for n in range(5):
            await database_sync_to_async(insert)("pg_manual", "ok")
        for n in range(3):
            with pytest.raises(RuntimeError):
                await database_sync_to_async(insert)("pg_manual", "bad", True)

    asyncio.run(consumer())
    assert rows_by_name("pg_manual") == {"ok": 5}
    assert open_transactions("pg_manual") == 0
    stats = get_stats()["pg_manual"]
    assert stats["connections_opened"] == 1 and stats["connections_reused"] == 7


@override_settings(KEEPALIVE_CHANNELS=False)
def test_channels_integration_switched_off_rolls_back_as_close_old_connections_does():
    asyncio.run(database_sync_to_async(insert)("pg_manual", "ok"))
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0


# -- Django's tasks framework ----------------------------------------------------------------

IMMEDIATE = {"default": {"BACKEND": (
    "django.tasks.backends.immediate.ImmediateBackend" if __import__("django").VERSION >= (6,)
    else "django_tasks.backends.immediate.ImmediateBackend")}}


@override_settings(TASKS=IMMEDIATE)
def test_django_tasks_are_units_of_work():
    from tests.testapp.tasks import insert_item

    def worker():
        results = [insert_item.enqueue("pg_manual", "ok") for _ in range(3)]
        results += [insert_item.enqueue("pg_manual", "bad", True) for _ in range(2)]
        return [str(result.status) for result in results]

    assert in_thread(worker) == ["SUCCESSFUL"] * 3 + ["FAILED"] * 2
    assert rows_by_name("pg_manual") == {"ok": 3}
    assert open_transactions("pg_manual") == 0
    assert get_stats()["pg_manual"]["connections_opened"] == 1


@override_settings(TASKS=IMMEDIATE)
def test_a_django_task_run_inline_by_a_unit_belongs_to_that_unit():
    from tests.testapp.tasks import insert_item

    def worker():
        with pytest.raises(RuntimeError), keepalive_mw.scope():
            insert_item.enqueue("pg_manual", "inline")
            raise RuntimeError("the enclosing unit fails")

    in_thread(worker)
    assert rows_by_name("pg_manual") == {}
    assert open_transactions("pg_manual") == 0
