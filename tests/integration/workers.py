"""Harness for workers and consumers: a private Redis, a Celery worker, a ``db_worker``,
daphne serving Channels consumers, enqueue-and-wait helpers and server-side session counts.

* :class:`Process` gives :class:`servers.Server`'s start, bounded stop and kept-on-failure
  logs to processes other than the HTTP servers: :class:`RedisServer` (Debian's
  ``redis-server`` on a free loopback port, nothing persisted), :class:`CeleryWorker`
  (prefork, its own queue), :class:`DbWorker` (``django_tasks_db``'s ``db_worker``) and
  :class:`DaphneServer` (``example.asgi_channels``).
* :class:`CeleryClient` sends tasks by name through the broker and reads their states from
  the Redis result backend: the test process never imports the example project.
* Evidence comes from the servers: task states, rows and task-queue rows counted by the
  test's own connections, ``pg_stat_database.sessions`` deltas and ``pg_stat_activity``.

Every wait is bounded and gives up early when the worker under test has exited.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import servers
from .servers import HarnessError

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

# Figures every variant is held to (the workers' acceptance figures).
MAX_NEW_SESSIONS_PER_TASK = 0.01
AFTER_TERMINATE = 40  # tasks right after every session was terminated: none may fail
GOOD, BAD = 100, 50  # succeeding and failing insert tasks with AUTOCOMMIT False
TASKS_PREFIX = "example.shop.tasks."
TASK_QUEUE_TABLE = "django_tasks_database_dbtaskresult"
DONE_STATUSES = ("SUCCESSFUL", "FAILED")


class Process(servers.Server):
    """A process that is not one of :class:`servers.Server`'s HTTP servers, started and
    stopped the same way (own process group, SIGTERM then SIGKILL, logs kept when the test
    failed). Subclasses give :meth:`command` and :meth:`ready`."""

    def __init__(self, kind: str, env: dict, *, start_timeout: float = 60.0,
                 stop_timeout: float = 20.0):
        # Not Server.__init__: it validates HTTP server kinds and options these do not have.
        self.kind = kind
        self.env = env
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.health_path = "/health/"
        self.port: int | None = None
        self.proc = None
        self._logdir = Path(tempfile.mkdtemp(prefix=f"kamw_{kind}_"))
        self.stdout_path = self._logdir / "stdout.log"
        self.stderr_path = self._logdir / "stderr.log"

    def command(self, port: int) -> list:
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether the process serves yet (called until true, up to ``start_timeout``)."""
        return True

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self.ready():
            self.check_alive()
            if time.monotonic() >= deadline:
                raise HarnessError(f"{self.kind} not ready within {self.start_timeout}s.\n"
                                   f"stderr:\n{self.stderr()}")
            time.sleep(0.1)

    def check_alive(self) -> None:
        """Raise HarnessError, with the end of its logs, if the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError(f"{self.kind} exited with {self.proc.returncode}.\n"
                               f"stdout:\n{self.stdout()}\nstderr:\n{self.stderr()}")

    def stdout(self, limit: int = 3000) -> str:
        return servers._tail(self.stdout_path, limit)


# ---------------------------------------------------------------------------
# Redis


class RedisServer(Process):
    """``redis-server`` on a free loopback port: no RDB snapshot, no AOF, files in a temp
    dir. Broker and result backend of the tests' Celery workers."""

    def __init__(self):
        super().__init__("redis", dict(os.environ), start_timeout=15.0, stop_timeout=10.0)

    def command(self, port: int) -> list:
        return [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self._logdir), "--logfile", ""]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


# ---------------------------------------------------------------------------
# Celery


class CeleryClient:
    """Sends tasks by name to a Celery worker's queue and waits for their results."""

    def __init__(self, broker_url: str, backend_url: str):
        from celery import Celery

        # fixups=[]: no Django fixup in the test process (DJANGO_SETTINGS_MODULE is set).
        self.app = Celery("kamw-client", broker=broker_url, backend=backend_url,
                          set_as_current=False, fixups=[])
        self.app.conf.broker_connection_retry_on_startup = True

    def send(self, task: str, queue: str, *args: Any) -> str:
        """Send ``example.shop.tasks.<task>(*args)``; return its id."""
        return self.app.send_task(TASKS_PREFIX + task, args=args, queue=queue).id

    def send_many(self, task: str, queue: str, count: int, *args: Any) -> list:
        with self.app.producer_or_acquire() as producer:
            return [self.app.send_task(TASKS_PREFIX + task, args=args, queue=queue,
                                       producer=producer).id for _ in range(count)]

    def wait(self, ids: Iterable[str], timeout: float,
             alive: Callable[[], None] | None = None) -> dict:
        """{id: (state, result)} once every task is done; ``alive`` is called between polls
        and may raise. HarnessError after ``timeout`` seconds."""
        ids = list(ids)
        done: dict = {}

        def on_interval():
            if alive is not None:
                alive()

        try:
            for task_id, meta in self.app.backend.get_many(ids, timeout=timeout, interval=0.05,
                                                           on_interval=on_interval):
                done[task_id] = (meta["status"], meta["result"])
        except TimeoutError:
            raise HarnessError(f"{len(ids) - len(done)} of {len(ids)} tasks not done after "
                               f"{timeout}s (states so far: {states(done)})") from None
        return done

    def close(self) -> None:
        self.app.close()


def states(results: dict) -> Counter:
    return Counter(state for state, _result in results.values())


class CeleryWorker(Process):
    """``celery -A example.celery_app worker``: prefork, ``concurrency`` children, its own
    queue, no gossip, mingle nor heartbeat. Ready once it ran a ``ping`` task."""

    def __init__(self, env: dict, redis: RedisServer, *, concurrency: int = 2,
                 extra_args: tuple = (), start_timeout: float = 60.0):
        self.queue = f"kamw_{uuid.uuid4().hex[:10]}"
        env = dict(env, EXAMPLE_BROKER_URL=redis.url(0), EXAMPLE_RESULT_BACKEND=redis.url(1))
        super().__init__("celery", env, start_timeout=start_timeout)
        self.concurrency = concurrency
        self.extra_args = tuple(extra_args)
        self.client = CeleryClient(redis.url(0), redis.url(1))
        self._probe: str | None = None

    def command(self, port: int) -> list:
        return [sys.executable, "-m", "celery", "-A", "example.celery_app", "worker",
                "--pool", "prefork", "--concurrency", str(self.concurrency),
                "--queues", self.queue, "--hostname", f"{self.queue}@localhost",
                "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
                "--without-heartbeat", *self.extra_args]

    def ready(self) -> bool:
        if self._probe is None:
            self._probe = self.client.send("ping", self.queue)
        return self.client.app.AsyncResult(self._probe).ready()

    def send(self, task: str, *args: Any) -> str:
        return self.client.send(task, self.queue, *args)

    def send_many(self, task: str, count: int, *args: Any) -> list:
        return self.client.send_many(task, self.queue, count, *args)

    def wait(self, ids: Iterable[str], timeout: float = 120.0) -> dict:
        return self.client.wait(ids, timeout, alive=self.check_alive)

    def run(self, task: str, count: int, *args: Any, timeout: float = 120.0) -> dict:
        """Send ``count`` tasks and wait until all are done."""
        return self.wait(self.send_many(task, count, *args), timeout)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.client.close()


# ---------------------------------------------------------------------------
# Django's tasks framework


class DbWorker(Process):
    """``python -m django db_worker`` of ``django_tasks_db`` on the example project
    (EXAMPLE_TASKS=1 is set), polling every ``interval`` seconds."""

    def __init__(self, env: dict, *, interval: float = 0.1):
        super().__init__("db_worker", dict(env, EXAMPLE_TASKS="1"))
        self.interval = interval

    def command(self, port: int) -> list:
        return [sys.executable, "-m", "django", "db_worker", "--settings", "example.settings",
                "--interval", str(self.interval), "--no-startup-delay", "--no-reload",
                "--verbosity", "0"]


def enqueue(env: dict, *specs: str, count: int = 1) -> None:
    """Enqueue example Django tasks from a subprocess: the ``KIND[:LABEL]`` sequence
    ``count`` times (see example/shop/management/commands/example_enqueue.py)."""
    servers.manage(dict(env, EXAMPLE_TASKS="1"), "example_enqueue", *specs, "--count", str(count))


class TaskQueue:
    """The task queue table of a PostgreSQL example database, read through one connection
    kept open (so that polling it opens no session on that database); a context manager."""

    def __init__(self, database):
        self.database = database
        self.conn = servers.pg_connect(database.name, port=database.port)

    def clear(self) -> None:
        self.conn.execute(f"DELETE FROM {TASK_QUEUE_TABLE}")

    def statuses(self) -> Counter:
        rows = self.conn.execute(f"SELECT status, count(*) FROM {TASK_QUEUE_TABLE} GROUP BY status")
        return Counter(dict(rows.fetchall()))

    def wait_done(self, total: int, worker: DbWorker, timeout: float = 120.0) -> Counter:
        """Statuses once ``total`` tasks are done (successful or failed)."""

        def done():
            worker.check_alive()
            current = self.statuses()
            return current if sum(current[s] for s in DONE_STATUSES) >= total else None

        try:
            return servers.wait_for(done, timeout, 0.05, f"{total} tasks done")
        except HarnessError as exc:
            raise HarnessError(f"{exc}; statuses {dict(self.statuses())}\n"
                               f"db_worker stderr:\n{worker.stderr()}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> TaskQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Channels


class DaphneServer(Process):
    """daphne serving ``example.asgi_channels:application`` on a free loopback port."""

    def __init__(self, env: dict, *, start_timeout: float = 30.0):
        super().__init__("daphne", env, start_timeout=start_timeout, stop_timeout=10.0)

    def command(self, port: int) -> list:
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                "-v", "0", "example.asgi_channels:application"]

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            return servers.http_get(self.port, self.health_path, timeout=2)[0] == 200
        return False


# ---------------------------------------------------------------------------
# server-side evidence


def pg_sessions_total(dbname: str, port: int | None = None) -> int:
    """pg_stat_database.sessions of ``dbname``: sessions ever established (fresh snapshot)."""
    with servers.pg_connect(port=port) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s",
                           [dbname]).fetchone()
    if row is None:
        raise HarnessError(f"no pg_stat_database row for {dbname!r}")
    return int(row[0])


def pg_settled_sessions_total(dbname: str, application_name: str | None = None,
                              port: int | None = None, timeout: float = 20.0) -> int:
    """The session counter once its pending statistics are in: after the sessions named
    ``application_name`` ended (a backend flushes its statistics when it exits; None: do not
    wait for that), when two reads 0.5 s apart agree."""
    if application_name is not None:
        servers.wait_for(lambda: not servers.pg_sessions(dbname, application_name, port),
                         timeout, 0.05, f"sessions {application_name!r} of {dbname} to end")
    reads = [pg_sessions_total(dbname, port)]

    def agreed():
        time.sleep(0.5)
        reads.append(pg_sessions_total(dbname, port))
        return reads[-1] == reads[-2]

    servers.wait_for(agreed, timeout, 0, f"the session counter of {dbname} to settle")
    return reads[-1]


class SessionCount:
    """Sessions established to an example database while ``units`` units of work ran in the
    block, and the peak connected; :meth:`settle`, once the workers stopped, counts them.

    ``wait_before``: first wait until the application's sessions ended (none is kept yet,
    e.g. those of a process that queued tasks before the worker starts).
    """

    def __init__(self, database, application_name: str, units: int, *,
                 wait_before: bool = False):
        self.database = database
        self.application_name = application_name
        self.units = units
        self.before = pg_settled_sessions_total(
            database.name, application_name if wait_before else None, port=database.port)
        self.sampler = servers.PgActivitySampler(database.name, application_name,
                                                 port=database.port)
        self.new: int | None = None
        self.elapsed = 0.0

    def __enter__(self) -> SessionCount:
        self.sampler.start()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self._started
        self.sampler.__exit__(*exc)

    def settle(self) -> float:
        """New sessions per unit, once the application's sessions ended."""
        after = pg_settled_sessions_total(self.database.name, self.application_name,
                                          port=self.database.port)
        self.new = after - self.before
        return self.new / self.units

    def __str__(self) -> str:
        per_unit = "?" if self.new is None else f"{self.new / self.units:.3f}"
        return (f"{self.units} tasks in {self.elapsed:.1f}s, {self.new} new sessions "
                f"({per_unit} per task), peak {self.sampler.peak} connected")


def open_transactions(database, application_name: str) -> dict:
    """Sessions of the example database inside a transaction: PostgreSQL sessions ``idle in
    transaction`` (or aborted) by state, MariaDB open InnoDB transactions by thread id."""
    if database.db == "postgresql":
        states_ = servers.pg_session_states(database.name, application_name, port=database.port)
        return {s: n for s, n in states_.items() if s.startswith("idle in transaction")}
    return {row[0]: row[1] for row in servers.mysql_open_transactions(database.name)}


def settled_open_transactions(database, application_name: str, timeout: float = 5.0) -> dict:
    """:func:`open_transactions` once no session is active nor in a transaction, or as they
    are after ``timeout`` seconds: the end of a unit of work may come just after its result
    is visible (Celery stores it before task_postrun)."""

    def settled():
        if database.db == "postgresql":
            states_ = servers.pg_session_states(database.name, application_name,
                                                port=database.port)
            return "active" not in states_ and not open_transactions(database, application_name)
        return not open_transactions(database, application_name)

    with contextlib.suppress(HarnessError):
        servers.wait_for(settled, timeout, 0.1, "no session active or in a transaction")
    return open_transactions(database, application_name)


def rows_kept(database, good_label: str, bad_label: str, good: int, open_trx: dict) -> tuple:
    """(rows of succeeding units, rows of failed units, a sentence with both and the
    transactions left open) of an AUTOCOMMIT False run."""
    rows_good = database.count_rows(good_label)
    rows_bad = database.count_rows(bad_label)
    return rows_good, rows_bad, (f"rows kept {rows_good} of {good} succeeding, {rows_bad} of "
                                 f"failed ones; open transactions once idle: {open_trx}")


def wait_quiet(database, application_name: str, quiet: float = 0.3,
               timeout: float = 20.0) -> None:
    """Wait until every session of the application has been idle for ``quiet`` seconds.

    A polling worker (``db_worker``) uses its connection a few milliseconds at a time: a
    session terminated in the middle of a poll fails that poll, like any query in flight.
    Terminated while the worker sleeps between polls, it must fail nothing.
    """
    where, params = servers._app_filter(application_name)

    def quiet_now() -> bool:
        with servers.pg_connect(port=database.port) as conn:
            busy = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND (state <> 'idle' OR now() - state_change < make_interval(secs => %s))"
                + where, [database.name, quiet, *params]).fetchone()[0]
        return busy == 0

    servers.wait_for(quiet_now, timeout, 0.02, f"sessions of {application_name} quiet")


def terminate_sessions(database, application_name: str) -> set:
    """End every session of the example database's application (KILL on MariaDB)."""
    if database.db == "postgresql":
        return servers.pg_terminate(database.name, application_name, port=database.port)
    return servers.mysql_terminate(database.name)
