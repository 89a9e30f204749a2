"""Celery workers: prefork, concurrency 2, a private Redis as broker and result backend,
Celery's Django fixup active, the example's plain task code (example/shop/tasks.py).

Reuse across tasks, no failed task after the server ended every session, commit of
succeeding and rollback of failing tasks with AUTOCOMMIT False, and prefork children that
never use their parent's session. Evidence from the servers: task states in Redis,
pg_stat_database / pg_stat_activity, rows.

KAMW_IT_CELERY_TASKS sets the number of tasks of the reuse test (default 1000);
KAMW_IT_CELERY_DB_REUSE_MAX runs the workers with CELERY_DB_REUSE_MAX.
"""

from __future__ import annotations

import os
import time

import pytest

from . import servers, workers

pytestmark = pytest.mark.servers

REUSE_TASKS = int(os.environ.get("KAMW_IT_CELERY_TASKS", "1000"))
WARMUP = 20
MAX_NEW_SESSIONS_PER_TASK, AFTER_TERMINATE, GOOD, BAD = (
    workers.MAX_NEW_SESSIONS_PER_TASK, workers.AFTER_TERMINATE, workers.GOOD, workers.BAD)


@pytest.fixture(scope="module")
def redis_server():
    with workers.RedisServer() as redis:
        yield redis


def _worker(redis, env):
    reuse_max = os.environ.get("KAMW_IT_CELERY_DB_REUSE_MAX")
    if reuse_max:
        env = dict(env, EXAMPLE_CELERY_DB_REUSE_MAX=reuse_max)
    return workers.CeleryWorker(env, redis)


def _sessions_used(results) -> set:
    return {result[1] for state, result in results.values() if state == "SUCCESS"}


def test_tasks_reuse_connections(pg_database, redis_server, variant, unique_name):
    env = pg_database.env(variant, unique_name)
    with _worker(redis_server, env) as worker:
        worker.run("queries", WARMUP)
        with workers.SessionCount(pg_database, unique_name, REUSE_TASKS) as count:
            results = worker.run("queries", REUSE_TASKS, timeout=300)
        stderr = worker.stderr()
    per_task = count.settle()
    states = workers.states(results)
    evidence = (f"{count}: states {dict(states)}, {len(_sessions_used(results))} sessions used\n"
                f"worker stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert states == {"SUCCESS": REUSE_TASKS}, evidence
    assert per_task <= MAX_NEW_SESSIONS_PER_TASK, evidence


def test_no_failed_task_after_sessions_are_terminated(pg_database, redis_server, variant,
                                                       unique_name):
    env = pg_database.env(variant, unique_name)
    with _worker(redis_server, env) as worker:
        warm = worker.run("queries", WARMUP)
        kept = servers.pg_pids(pg_database.name, unique_name)
        killed = workers.terminate_sessions(pg_database, unique_name)
        results = worker.run("queries", AFTER_TERMINATE)
        stderr = worker.stderr()
    failed = {task_id: r for task_id, r in results.items() if r[0] != "SUCCESS"}
    evidence = (f"warm-up {dict(workers.states(warm))}, sessions kept {sorted(kept)}, "
                f"terminated {sorted(killed)}; next {AFTER_TERMINATE} tasks: "
                f"{dict(workers.states(results))}, e.g. {list(failed.values())[:2]}\n"
                f"worker stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert killed, f"no session kept between tasks, nothing to terminate: {evidence}"
    assert not failed, evidence
    assert not (_sessions_used(results) & killed), evidence


@pytest.mark.parametrize("db", ["postgresql", "mysql"])
def test_autocommit_off_commits_succeeded_rolls_back_failed(request, db, redis_server, variant,
                                                             unique_name):
    database = request.getfixturevalue("pg_database" if db == "postgresql" else "mysql_database")
    database.truncate()
    env = database.env(variant, unique_name, EXAMPLE_AUTOCOMMIT="0")
    with _worker(redis_server, env) as worker:
        good, bad = [], []
        for _ in range(BAD):  # interleaved: good, good, bad, ...
            good += [worker.send("insert", "celery_ok") for _ in range(GOOD // BAD)]
            bad.append(worker.send("insert_then_fail", "celery_fail"))
        results = worker.wait(good + bad)
        open_trx = workers.settled_open_transactions(database, unique_name)
        stderr = worker.stderr()
    rows_ok, rows_failed, rows = workers.rows_kept(database, "celery_ok", "celery_fail", GOOD,
                                                   open_trx)
    evidence = (f"{db}: good tasks {dict(workers.states({i: results[i] for i in good}))}, "
                f"failing tasks {dict(workers.states({i: results[i] for i in bad}))}; {rows}\n"
                f"worker stderr (tail):\n{stderr[-2000:]}")
    print(evidence)
    assert workers.states({i: results[i] for i in good}) == {"SUCCESS": GOOD}, evidence
    assert workers.states({i: results[i] for i in bad}) == {"FAILURE": BAD}, evidence
    assert rows_ok == GOOD, evidence
    assert rows_failed == 0, evidence
    assert not open_trx, evidence


@pytest.mark.parametrize("moment", ["before_fork", "import"])
def test_prefork_children_never_use_the_parents_session(pg_database, redis_server, variant,
                                                        unique_name, moment, tmp_path):
    """The main process queries before the pool forks (before_fork: after worker_init, its
    connection open at fork; import: closed at worker_init, by Celery's fixup in plain
    Django, by keepalive_mw when it is installed)."""
    pid_file = tmp_path / "parent_session"
    flag = "EXAMPLE_QUERY_BEFORE_FORK" if moment == "before_fork" else "EXAMPLE_QUERY_AT_IMPORT"
    env = pg_database.env(variant, unique_name, EXAMPLE_IMPORT_PID_FILE=pid_file, **{flag: "1"})
    with _worker(redis_server, env) as worker:
        parent = int(pid_file.read_text())
        results = worker.run("queries", 40)
        time.sleep(0.5)  # a Terminate sent by a child takes effect at once; be generous
        sessions = {pid: state for pid, state, _ in servers.pg_sessions(pg_database.name, unique_name)}
        stderr = worker.stderr()
    children = {result[0] for state, result in results.values() if state == "SUCCESS"}
    used = _sessions_used(results)
    evidence = (f"{moment}: parent session {parent}; tasks {dict(workers.states(results))} in "
                f"children {sorted(children)} used sessions {sorted(used)}; sessions now "
                f"{sessions}\nworker stderr (tail):\n{stderr[-3000:]}")
    print(evidence)
    assert workers.states(results) == {"SUCCESS": 40}, evidence
    assert parent not in used, f"a child used the parent's session: {evidence}"
    if moment == "before_fork":
        assert sessions.get(parent) == "idle", f"the parent's session did not survive: {evidence}"
    else:
        assert parent not in sessions, f"start-up's session outlived worker_init: {evidence}"
