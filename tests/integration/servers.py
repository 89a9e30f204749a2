"""Harness for integration tests: real servers, real load, server-side evidence.

* :class:`Server` runs the example project under gunicorn (sync, gthread, gevent) or
  uvicorn on a free loopback port, waits until it answers and stops it.
* :func:`run_load` sends a bounded concurrent HTTP load with threads + http.client.
* Evidence is read with separate raw driver connections (psycopg / MySQLdb), never
  Django's: PostgreSQL sessions and transaction counters, a pg_stat_activity sampler,
  MariaDB process list and open InnoDB transactions, and session termination.
* :func:`prepare_database` (re)creates an example database and migrates it.
* :class:`PgCluster` is a throwaway PostgreSQL cluster with ``restart()``.

Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_BIN = Path(os.environ.get("EXAMPLE_PG_BIN", "/usr/lib/postgresql/15/bin"))

PG_DEFAULTS = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""}
MYSQL_DEFAULTS = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


class HarnessError(AssertionError):
    """A server or database could not be brought into the state a test needs."""


# ---------------------------------------------------------------------------
# small utilities


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout:.1f}s waiting for {message} (last: {last!r})")
        time.sleep(interval)


def _tail(path: Path, limit: int = 6000) -> str:
    try:
        data = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return data[-limit:]


# ---------------------------------------------------------------------------
# environment of the example project


def example_env(db: str = "postgresql", **overrides) -> dict:
    """Environment for a server or ``manage`` subprocess of the example project.

    Inherited EXAMPLE_*/KEEPALIVE_* variables and DJANGO_SETTINGS_MODULE (pytest-django
    sets it to the unit-test settings) are dropped; ``overrides`` (str() of values) win.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EXAMPLE_", "KEEPALIVE_")) and k != "DJANGO_SETTINGS_MODULE"
    }
    pythonpath = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(
        PYTHONPATH=os.pathsep.join(pythonpath),
        DJANGO_SETTINGS_MODULE="example.settings",
        PYTHONUNBUFFERED="1",
        EXAMPLE_DB=db,
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


def manage(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m django <args> --settings example.settings`` in a subprocess."""
    cmd = [sys.executable, "-m", "django", *args, "--settings", "example.settings"]
    proc = subprocess.run(
        cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise HarnessError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


# ---------------------------------------------------------------------------
# servers

WORKER_KINDS = ("sync", "gthread", "gevent", "uvicorn")


class Server:
    """A gunicorn or uvicorn process serving the example project; a context manager.

    ``kind``: "sync" (gunicorn sync workers), "gthread" (gunicorn ``--threads``),
    "gevent" (gunicorn ``-k gevent``) or "uvicorn" (``example.asgi:application``).
    """

    def __init__(
        self,
        kind: str,
        env: dict,
        *,
        workers: int = 2,
        threads: int = 4,
        preload: bool = False,
        extra_args: tuple = (),
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        health_path: str = "/health/",
        ready_status: int = 200,
    ):
        if kind not in WORKER_KINDS:
            raise ValueError(f"kind must be one of {WORKER_KINDS}")
        self.kind = kind
        self.env = env
        self.workers = workers
        self.threads = threads
        self.preload = preload
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.health_path = health_path
        # The status of health_path that means "up" (a server expected to fail requests).
        self.ready_status = ready_status
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._logdir = Path(tempfile.mkdtemp(prefix=f"kamw_{kind}_"))
        self.stdout_path = self._logdir / "stdout.log"
        self.stderr_path = self._logdir / "stderr.log"

    # -- command line
    def command(self, port: int) -> list:
        bind = f"127.0.0.1:{port}"
        if self.kind == "uvicorn":
            cmd = [
                sys.executable, "-m", "uvicorn", "example.asgi:application",
                "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(self.workers),
                "--no-access-log", "--log-level", "warning",
                "--timeout-graceful-shutdown", "3",
            ]
        else:
            cmd = [
                sys.executable, "-m", "gunicorn", "example.wsgi:application",
                "--bind", bind, "--workers", str(self.workers),
                "--chdir", str(REPO_ROOT),
                "--graceful-timeout", "3", "--timeout", "60",
                "--log-level", "warning",
            ]
            if self.kind == "gthread":
                cmd += ["--worker-class", "gthread", "--threads", str(self.threads)]
            elif self.kind == "gevent":
                cmd += ["--worker-class", "gevent"]
            else:
                cmd += ["--worker-class", "sync"]
            if self.preload:
                cmd.append("--preload")
        return cmd + list(self.extra_args)

    # -- lifecycle
    def start(self) -> "Server":
        self.port = free_port()
        cmd = self.command(self.port)
        self._stdout = open(self.stdout_path, "wb")
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=self._stderr,
            start_new_session=True,  # its own process group: stop() reaches the workers
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self):
        deadline = time.monotonic() + self.start_timeout
        last_error = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(
                    f"{self.kind} server exited with {self.proc.returncode} before answering.\n"
                    f"command: {' '.join(self.command(self.port))}\n"
                    f"stderr:\n{self.stderr()}"
                )
            try:
                status, body = http_get(self.port, self.health_path, timeout=2)
                if status == self.ready_status:
                    return
                last_error = f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise HarnessError(
            f"{self.kind} server did not answer {self.health_path} within "
            f"{self.start_timeout}s (last: {last_error}).\nstderr:\n{self.stderr()}"
        )

    def stop(self):
        """SIGTERM to the master, then SIGKILL to its whole process group (bounded)."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            # Workers that outlived their master (should not happen) go too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            for fh in (getattr(self, "_stdout", None), getattr(self, "_stderr", None)):
                if fh is not None:
                    fh.close()

    def stderr(self, limit: int = 6000) -> str:
        return _tail(self.stderr_path, limit)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, exc_type, *exc):
        self.stop()
        if exc_type is None:
            shutil.rmtree(self._logdir, ignore_errors=True)  # kept when something failed
        return False


# ---------------------------------------------------------------------------
# HTTP load


def http_get(port: int, path: str, timeout: float = 10.0, host: str = "127.0.0.1"):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


@dataclass
class Response:
    index: int
    path: str
    status: int | None  # None when the request raised
    body: str
    error: str | None
    elapsed: float


@dataclass
class LoadResult:
    responses: list = field(default_factory=list)
    duration: float = 0.0
    aborted: bool = False

    @property
    def statuses(self) -> Counter:
        return Counter(r.status for r in self.responses)

    @property
    def errors(self) -> list:
        """Requests that raised (connection refused/reset, timeout...)."""
        return [r for r in self.responses if r.error is not None]

    @property
    def non_200(self) -> list:
        return [r for r in self.responses if r.status != 200]

    def bodies(self, path: str | None = None) -> list:
        return [r.body.strip() for r in self.responses if r.status == 200 and (path is None or r.path == path)]

    def by_path(self) -> dict:
        out: dict = {}
        for r in self.responses:
            out.setdefault(r.path, Counter())[r.status] += 1
        return out

    def summary(self) -> str:
        errs = Counter(r.error for r in self.errors).most_common(3)
        return (
            f"{len(self.responses)} requests in {self.duration:.2f}s, statuses {dict(self.statuses)}, "
            f"by path {dict((p, dict(c)) for p, c in self.by_path().items())}, errors {errs}"
        )


def run_load(
    port: int,
    paths,
    *,
    clients: int = 8,
    total: int | None = None,
    duration: float | None = None,
    timeout: float = 10.0,
    stop_event: threading.Event | None = None,
    max_total: int = 20000,
    host: str = "127.0.0.1",
    keepalive: bool = True,
) -> LoadResult:
    """Send GET requests from ``clients`` threads, each with a keep-alive connection.

    ``paths``: one path or a list; request *i* goes to ``paths[i % len(paths)]`` (so a
    list interleaves kinds of requests). Stops after ``total`` requests, after
    ``duration`` seconds, when ``stop_event`` is set, or at ``max_total`` — whichever
    comes first; always bounded. Requests that raise are recorded with status None.
    ``keepalive=False`` sends ``Connection: close`` (a new HTTP connection, hence under
    gevent a new greenlet, for every request).
    """
    if total is None and duration is None:
        raise ValueError("give total and/or duration")
    paths = [paths] if isinstance(paths, str) else list(paths)
    limit = min(total if total is not None else max_total, max_total)
    counter = itertools.count()
    lock = threading.Lock()
    result = LoadResult()
    stop = stop_event or threading.Event()
    start = time.monotonic()
    deadline = start + duration if duration is not None else None
    headers = {} if keepalive else {"Connection": "close"}

    def next_index():
        if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
            return None
        with lock:
            i = next(counter)
        return i if i < limit else None

    def client():
        conn = None
        while True:
            i = next_index()
            if i is None:
                break
            path = paths[i % len(paths)]
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode("utf-8", "replace")
                item = Response(i, path, resp.status, body, None, time.monotonic() - t0)
                if resp.will_close:
                    conn.close()
                    conn = None
            except Exception as exc:  # noqa: BLE001 - every failure is data
                item = Response(i, path, None, "", f"{type(exc).__name__}: {exc}", time.monotonic() - t0)
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                result.responses.append(item)
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True, name=f"load-{n}") for n in range(clients)]
    for t in threads:
        t.start()
    # Bounded join: the load itself is bounded, plus one request timeout of slack.
    budget = (duration if duration is not None else 600.0) + timeout + 10
    join_deadline = time.monotonic() + budget
    for t in threads:
        t.join(max(0.0, join_deadline - time.monotonic()))
    if any(t.is_alive() for t in threads):
        stop.set()
        for t in threads:
            t.join(timeout + 2)
        raise HarnessError(f"load clients did not finish within {budget:.0f}s")
    result.duration = time.monotonic() - start
    result.aborted = stop.is_set()
    result.responses.sort(key=lambda r: r.index)
    return result


# ---------------------------------------------------------------------------
# PostgreSQL evidence (raw psycopg connections to the "postgres" database, so that the
# observer's own transactions never count in the example database's statistics)


def pg_connect(dbname: str = "postgres", port: int | None = None, **kw):
    import psycopg

    params = dict(PG_DEFAULTS)
    if port is not None:
        params["port"] = port
    params.update(kw)
    return psycopg.connect(
        host=params["host"], port=int(params["port"]), user=params["user"],
        password=params["password"] or None, dbname=dbname, autocommit=True,
        connect_timeout=5, application_name="kamw-observer",
    )


def _app_filter(application_name):
    if application_name is None:
        return "", []
    # keepalive_mw appends its attribution (" keepalive_mw host:pid") to the configured name.
    return " AND application_name LIKE %s", [application_name + "%"]


def pg_sessions(dbname: str, application_name: str | None = None, port: int | None = None) -> list:
    """Client sessions connected to ``dbname``: list of (pid, state, application_name)."""
    where, params = _app_filter(application_name)
    with pg_connect(port=port) as conn:
        return conn.execute(
            "SELECT pid, coalesce(state, ''), application_name FROM pg_stat_activity "
            "WHERE datname = %s AND backend_type = 'client backend'" + where + " ORDER BY pid",
            [dbname, *params],
        ).fetchall()


def pg_session_states(dbname: str, application_name: str | None = None, port: int | None = None) -> Counter:
    """Count of client sessions of ``dbname`` by state ('idle', 'idle in transaction'...)."""
    return Counter(state for _pid, state, _app in pg_sessions(dbname, application_name, port))


def pg_pids(dbname: str, application_name: str | None = None, port: int | None = None) -> set:
    return {pid for pid, _state, _app in pg_sessions(dbname, application_name, port)}


def pg_terminate(dbname: str, application_name: str | None = None, port: int | None = None,
                 wait: float = 10.0) -> set:
    """``pg_terminate_backend`` every client session of ``dbname``; wait until gone."""
    where, params = _app_filter(application_name)
    with pg_connect(port=port) as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            + where,
            [dbname, *params],
        ).fetchall()
    killed = {pid for pid, _ok in rows}
    wait_for(lambda: not (pg_pids(dbname, application_name, port) & killed), wait, 0.05,
             f"terminated sessions of {dbname} to disappear")
    return killed


def pg_xacts(dbname: str, port: int | None = None) -> int:
    """xact_commit + xact_rollback of ``dbname`` as of now (fresh snapshot)."""
    with pg_connect(port=port) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            [dbname],
        ).fetchone()
    if row is None:
        raise HarnessError(f"no pg_stat_database row for {dbname!r}")
    return int(row[0])


def pg_settled_xacts(dbname: str, port: int | None = None, timeout: float = 20.0,
                     interval: float = 1.2) -> int:
    """Transaction counter of ``dbname`` once every backend's statistics are flushed.

    PostgreSQL 15 backends flush pending statistics at most once a second, and an idle
    backend whose flush was skipped only retries ~10 s later (PGSTAT_IDLE_INTERVAL), so
    reads "1.2 s apart that agree" are not proof while sessions remain. A backend does
    flush when it exits. So: wait until no client session of the database remains (stop
    the servers first), then until two reads ``interval`` apart agree.
    """
    wait_for(lambda: not pg_sessions(dbname, port=port), timeout, 0.05,
             f"no client sessions left on {dbname} (stop the servers before reading settled counters)")
    deadline = time.monotonic() + timeout
    previous = pg_xacts(dbname, port)
    while True:
        time.sleep(interval)
        current = pg_xacts(dbname, port)
        if current == previous:
            return current
        if time.monotonic() >= deadline:
            raise HarnessError(f"xact counter of {dbname} did not settle ({previous} -> {current})")
        previous = current


class PgActivitySampler:
    """Polls pg_stat_activity every ``interval`` s in a thread; a context manager.

    Records the peak number of client sessions connected to ``dbname`` (optionally only
    those with ``application_name``) and every pid seen. When ``abort_above`` is given
    and the count exceeds it, ``abort_event`` is set (hand it to :func:`run_load` as
    ``stop_event`` so a misbehaving server cannot exhaust max_connections).
    """

    def __init__(self, dbname: str, application_name: str | None = None, *, interval: float = 0.05,
                 port: int | None = None, abort_above: int | None = None,
                 abort_event: threading.Event | None = None):
        self.dbname = dbname
        self.application_name = application_name
        self.interval = interval
        self.port = port
        self.abort_above = abort_above
        self.abort_event = abort_event or threading.Event()
        self.peak = 0
        self.samples: list = []
        self.pids_seen: set = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="pg-sampler")

    def _run(self):
        where, params = _app_filter(self.application_name)
        sql = ("SELECT pid FROM pg_stat_activity WHERE datname = %s "
               "AND backend_type = 'client backend'" + where)
        try:
            with pg_connect(port=self.port) as conn:
                while not self._stop.is_set():
                    # autocommit: every statement is a new transaction, hence a fresh
                    # snapshot of pg_stat_activity.
                    pids = [r[0] for r in conn.execute(sql, [self.dbname, *params]).fetchall()]
                    self.samples.append(len(pids))
                    self.pids_seen.update(pids)
                    self.peak = max(self.peak, len(pids))
                    if self.abort_above is not None and len(pids) > self.abort_above:
                        self.abort_event.set()
                    self._stop.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
            self.abort_event.set()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise HarnessError(f"pg_stat_activity sampler failed: {self.error!r}")

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        self._thread.join(10)
        if exc_type is None and self.error is not None:
            raise HarnessError(f"pg_stat_activity sampler failed: {self.error!r}")
        return False


# ---------------------------------------------------------------------------
# MariaDB evidence


def mysql_connect(dbname: str | None = None, **kw):
    import MySQLdb

    params = dict(MYSQL_DEFAULTS)
    params.update(kw)
    args = dict(host=params["host"], port=int(params["port"]), user=params["user"],
                passwd=params["password"], connect_timeout=5, autocommit=True)
    if dbname:
        args["db"] = dbname
    return MySQLdb.connect(**args)


def mysql_query(sql: str, params=(), dbname: str | None = None, port: int | None = None) -> list:
    conn = mysql_connect(dbname, **({"port": port} if port is not None else {}))
    try:
        cur = conn.cursor()
        cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        conn.close()


def mysql_processes(dbname: str, port: int | None = None) -> list:
    """Threads connected to ``dbname``: list of (id, command, time, state)."""
    return mysql_query(
        "SELECT id, command, time, state FROM information_schema.processlist "
        "WHERE db = %s AND id <> CONNECTION_ID() ORDER BY id",
        (dbname,), port=port,
    )


def mysql_open_transactions(dbname: str) -> list:
    """Open InnoDB transactions of threads connected to ``dbname``:
    list of (thread id, trx state, trx started, command)."""
    return mysql_query(
        "SELECT t.trx_mysql_thread_id, t.trx_state, t.trx_started, p.command "
        "FROM information_schema.innodb_trx t "
        "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
        "WHERE p.db = %s",
        (dbname,),
    )


def mysql_terminate(dbname: str, wait: float = 10.0, port: int | None = None) -> set:
    """KILL every thread connected to ``dbname``; wait until they are gone."""
    import MySQLdb

    ids = {row[0] for row in mysql_processes(dbname, port)}
    conn = mysql_connect(**({"port": port} if port is not None else {}))
    try:
        cur = conn.cursor()
        for thread_id in ids:
            with contextlib.suppress(MySQLdb.OperationalError):  # already gone
                cur.execute(f"KILL {int(thread_id)}")
    finally:
        conn.close()
    wait_for(lambda: not ({row[0] for row in mysql_processes(dbname, port)} & ids), wait, 0.05,
             f"killed threads of {dbname} to disappear")
    return ids


# ---------------------------------------------------------------------------
# example databases


def create_database(db: str, dbname: str, port: int | None = None):
    """Drop (forcibly) and create ``dbname`` on PostgreSQL or MariaDB."""
    if db == "postgresql":
        with pg_connect(port=port) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{dbname}"')
    elif db == "mysql":
        mysql_query(f"DROP DATABASE IF EXISTS `{dbname}`", port=port)
        mysql_query(f"CREATE DATABASE `{dbname}` CHARACTER SET utf8mb4", port=port)
    else:
        raise ValueError(db)


def drop_database(db: str, dbname: str, port: int | None = None):
    with contextlib.suppress(Exception):
        if db == "postgresql":
            with pg_connect(port=port) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        elif db == "mysql":
            mysql_query(f"DROP DATABASE IF EXISTS `{dbname}`")


def prepare_database(db: str, dbname: str, port: int | None = None, env: dict | None = None):
    """(Re)create ``dbname`` and migrate it with ``python -m django migrate``.

    Migrations run with EXAMPLE_VARIANT=default and EXAMPLE_AUTOCOMMIT=1, so that they
    commit whatever the variant under test is.
    """
    create_database(db, dbname, port)
    overrides = dict(EXAMPLE_DB_NAME=dbname, EXAMPLE_VARIANT="default", EXAMPLE_AUTOCOMMIT="1",
                     EXAMPLE_APPNAME="kamw-migrate")
    if port is not None:
        overrides["EXAMPLE_DB_PORT"] = port
    base = dict(env) if env is not None else example_env(db)
    base.update({k: str(v) for k, v in overrides.items()})
    manage(base, "migrate", "--verbosity", "0")


def truncate(db: str, dbname: str, port: int | None = None):
    if db == "postgresql":
        with pg_connect(dbname, port=port) as conn:
            conn.execute("TRUNCATE shop_row RESTART IDENTITY")
    else:
        mysql_query("TRUNCATE TABLE shop_row", dbname=dbname)


def count_rows(db: str, dbname: str, port: int | None = None, label: str | None = None) -> int:
    where = " WHERE label = %s" if label else ""
    params = [label] if label else []
    if db == "postgresql":
        with pg_connect(dbname, port=port) as conn:
            return conn.execute("SELECT count(*) FROM shop_row" + where, params).fetchone()[0]
    return mysql_query("SELECT count(*) FROM shop_row" + where, params, dbname=dbname)[0][0]


# ---------------------------------------------------------------------------
# throwaway PostgreSQL cluster


class PgCluster:
    """A throwaway PostgreSQL cluster (initdb as the ``postgres`` OS user, trust auth on
    127.0.0.1, a free port, sockets in /tmp); a context manager with ``restart()``."""

    def __init__(self, *, os_user: str = "postgres", max_connections: int = 50,
                 timeout: int = 30):
        self.os_user = os_user
        self.max_connections = max_connections
        self.timeout = timeout
        self.port: int | None = None
        self.tmpdir: Path | None = None

    @property
    def datadir(self) -> Path:
        return self.tmpdir / "data"

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "postgres.log"

    def _run(self, *args, timeout=None):
        cmd = ["runuser", "-u", self.os_user, "--", *map(str, args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout + 30)
        if proc.returncode != 0:
            log = _tail(self.logfile) if self.tmpdir else ""
            raise HarnessError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    def _options(self) -> str:
        return (f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off "
                f"-c max_connections={self.max_connections}")

    def start(self) -> "PgCluster":
        import pwd

        entry = pwd.getpwnam(self.os_user)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="kamw_pg_"))
        os.chown(self.tmpdir, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        try:
            self._run(PG_BIN / "initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
                      "--no-sync", "-E", "UTF8", "--locale=C")
            self._run(PG_BIN / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", self._options(),
                      "-w", "-t", self.timeout, "start")
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self):
        """Fast restart: every session is terminated; returns when it accepts again."""
        self._run(PG_BIN / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", self._options(),
                  "-m", "fast", "-w", "-t", self.timeout, "restart")

    def stop(self):
        if self.tmpdir is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                try:
                    self._run(PG_BIN / "pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", 20, "stop")
                except (HarnessError, subprocess.TimeoutExpired):
                    with contextlib.suppress(Exception):
                        self._run(PG_BIN / "pg_ctl", "-D", self.datadir, "-m", "immediate", "-w", "-t", 10, "stop")
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class MariaDbServer:
    """A throwaway MariaDB server (``mariadb-install-db`` as the ``mysql`` OS user, root
    without a password on 127.0.0.1, a free port); a context manager with ``restart()``."""

    def __init__(self, *, os_user: str = "mysql", timeout: float = 60):
        self.os_user = os_user
        self.timeout = timeout
        self.port: int | None = None
        self.tmpdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def datadir(self) -> Path:
        return self.tmpdir / "data"

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "mariadb.log"

    def start(self) -> "MariaDbServer":
        import pwd

        entry = pwd.getpwnam(self.os_user)
        self.tmpdir = Path(tempfile.mkdtemp(prefix="kamw_mariadb_"))
        os.chown(self.tmpdir, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        try:
            proc = subprocess.run(
                ["runuser", "-u", self.os_user, "--", shutil.which("mariadb-install-db")
                 or "mysql_install_db", f"--datadir={self.datadir}",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                capture_output=True, text=True, timeout=self.timeout)
            if proc.returncode != 0:
                raise HarnessError(f"mariadb-install-db failed:\n{proc.stdout}\n{proc.stderr}")
            self._launch()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self):
        cmd = ["runuser", "-u", self.os_user, "--", "/usr/sbin/mariadbd", "--no-defaults",
               f"--datadir={self.datadir}", f"--port={self.port}", "--bind-address=127.0.0.1",
               f"--socket={self.tmpdir / 'mysqld.sock'}", f"--pid-file={self.tmpdir / 'mysqld.pid'}",
               f"--log-error={self.logfile}", "--innodb-buffer-pool-size=32M",
               "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin", "--max-connections=100"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise HarnessError(f"mariadbd exited ({self.proc.returncode}):\n{_tail(self.logfile)}")
            try:
                mysql_connect(port=self.port).close()
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False

        wait_for(ready, self.timeout, 0.05, "mariadbd to accept connections")

    def restart(self):
        """Shutdown (every session ends) and start again; returns when it accepts again."""
        self._shutdown()
        self._launch()

    def _shutdown(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # runuser forwards it: a normal shutdown
            try:
                self.proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def stop(self):
        if self.tmpdir is None:
            return
        try:
            self._shutdown()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "MariaDbServer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
