"""Django's tasks framework: ``django_tasks_db``'s ``db_worker`` (``django.tasks`` on Django
6, the ``django_tasks`` backport before) running the example's plain tasks
(example/shop/jobs.py). Reuse across tasks, no failed task after the server ended every
session, commit of succeeding and rollback of failing tasks with AUTOCOMMIT False.

KAMW_IT_DB_WORKER_TASKS sets the number of tasks of the reuse test (default 300).
"""

from __future__ import annotations

import os

import pytest

from . import servers, workers

pytestmark = pytest.mark.servers

REUSE_TASKS = int(os.environ.get("KAMW_IT_DB_WORKER_TASKS", "300"))
WARMUP = 10
MAX_NEW_SESSIONS_PER_TASK, AFTER_TERMINATE, GOOD, BAD = (
    workers.MAX_NEW_SESSIONS_PER_TASK, workers.AFTER_TERMINATE, workers.GOOD, workers.BAD)


@pytest.fixture
def queue(pg_tasks_database):
    with workers.TaskQueue(pg_tasks_database) as task_queue:
        task_queue.clear()
        pg_tasks_database.truncate()
        yield task_queue


def test_tasks_reuse_connections(pg_tasks_database, queue, variant, unique_name):
    """New sessions over REUSE_TASKS tasks, the worker's start included: the tasks are
    queued before it starts, so that the queueing process's sessions are not counted."""
    database = pg_tasks_database
    env = database.env(variant, unique_name)
    workers.enqueue(env, "queries", count=REUSE_TASKS)
    with (workers.SessionCount(database, unique_name, REUSE_TASKS, wait_before=True) as count,
          workers.DbWorker(env) as worker):
        statuses = queue.wait_done(REUSE_TASKS, worker)
        stderr = worker.stderr()
    per_task = count.settle()
    evidence = f"{count}: statuses {dict(statuses)}\ndb_worker stderr (tail):\n{stderr[-3000:]}"
    print(evidence)
    assert statuses == {"SUCCESSFUL": REUSE_TASKS}, evidence
    assert per_task <= MAX_NEW_SESSIONS_PER_TASK, evidence


def test_no_failed_task_after_sessions_are_terminated(pg_tasks_database, queue, variant,
                                                       unique_name):
    database = pg_tasks_database
    env = database.env(variant, unique_name)
    # Polls 3 s apart: the sessions are terminated while the worker sleeps between two
    # polls, not in the middle of one (a query in flight fails whatever the library).
    with workers.DbWorker(env, interval=3.0) as worker:
        workers.enqueue(env, "queries", count=WARMUP)
        warm = queue.wait_done(WARMUP, worker)
        kept = servers.pg_pids(database.name, unique_name)
        workers.wait_quiet(database, unique_name)
        killed = workers.terminate_sessions(database, unique_name)
        workers.enqueue(env, "queries", count=AFTER_TERMINATE)
        try:
            statuses = queue.wait_done(WARMUP + AFTER_TERMINATE, worker, timeout=60)
        except servers.HarnessError as exc:
            statuses = f"not done: {str(exc)[:1500]}"
    evidence = (f"warm-up {dict(warm)}, sessions kept {sorted(kept)}, terminated "
                f"{sorted(killed)}; after {AFTER_TERMINATE} more: {statuses}")
    print(evidence)
    assert killed, f"no session kept between tasks, nothing to terminate: {evidence}"
    assert statuses == {"SUCCESSFUL": WARMUP + AFTER_TERMINATE}, evidence


def test_autocommit_off_commits_succeeded_rolls_back_failed(pg_tasks_database, queue, variant,
                                                             unique_name):
    """The task queue's tables are on an autocommit alias (EXAMPLE_TASKS_DB_ALIAS=1): the
    worker's claims and result statuses persist whatever happens to the task's own writes
    on ``default``, which has AUTOCOMMIT False, and those rows are what is asserted."""
    database = pg_tasks_database
    env = database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0", EXAMPLE_TASKS_DB_ALIAS="1")
    workers.enqueue(env, "insert:tasks_ok", "insert:tasks_ok", "insert_then_fail:tasks_fail",
                    count=BAD)
    with workers.DbWorker(env) as worker:
        statuses = queue.wait_done(GOOD + BAD, worker)
        open_trx = workers.settled_open_transactions(database, unique_name)
        stderr = worker.stderr()
    rows_ok, rows_failed, rows = workers.rows_kept(database, "tasks_ok", "tasks_fail", GOOD,
                                                   open_trx)
    evidence = f"statuses {dict(statuses)}; {rows}\ndb_worker stderr (tail):\n{stderr[-2000:]}"
    print(evidence)
    assert statuses == {"SUCCESSFUL": GOOD, "FAILED": BAD}, evidence
    assert rows_ok == GOOD, evidence
    assert rows_failed == 0, evidence
    assert not open_trx, evidence
