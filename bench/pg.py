"""The benchmark's PostgreSQL: a throwaway cluster with password (scram-sha-256) auth,
an optional PgBouncer in front of it, and server-side evidence read by an observer.

The shared PostgreSQL service is never touched: the cluster lives in a temp dir, on a free
loopback port, with its own pg_hba.conf, and is removed at the end.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

AUTH_METHOD = "scram-sha-256"
ROLE = "bench"
PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)


class BenchError(RuntimeError):
    """The benchmark could not set something up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bin() -> Path:
    """Directory of initdb/pg_ctl: $BENCH_PG_BIN, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("BENCH_PG_BIN"):
        return Path(os.environ["BENCH_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise BenchError("initdb not found: install PostgreSQL server binaries or set BENCH_PG_BIN")


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


class _AsUser:
    """Run commands as the ``postgres`` OS user when root (initdb and pgbouncer refuse
    root), else as ourselves."""

    def __init__(self, os_user: str = "postgres"):
        self.root = os.geteuid() == 0
        self.os_user = os_user
        self.entry = pwd.getpwnam(os_user) if self.root else None

    def cmd(self, *args) -> list:
        args = [str(a) for a in args]
        return ["runuser", "-u", self.os_user, "--", *args] if self.root else args

    def popen_options(self) -> dict:
        """Popen arguments that run a long-lived program as the user directly: runuser in
        between sleeps 2 s after forwarding a signal before it exits."""
        if not self.root:
            return {}
        return {"user": self.entry.pw_uid, "group": self.entry.pw_gid, "extra_groups": []}

    def own(self, path: Path) -> None:
        if self.root:
            os.chown(path, self.entry.pw_uid, self.entry.pw_gid)


class BenchCluster:
    """initdb + pg_ctl start of a cluster whose TCP connections authenticate with
    scram-sha-256 (pg_hba: ``host all all 127.0.0.1/32 scram-sha-256``; only the Unix
    socket in the private temp dir is trusted), with pg_stat_statements loaded."""

    def __init__(self, max_connections: int = 100, timeout: int = 60):
        self.max_connections = max_connections
        self.timeout = timeout
        self.user = _AsUser()
        self.bin = pg_bin()
        self.tmpdir: Path | None = None
        self.port: int | None = None
        self.password = secrets.token_urlsafe(18)
        self.superuser_password = secrets.token_urlsafe(18)

    @property
    def datadir(self) -> Path:
        return self.tmpdir / "data"

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "postgres.log"

    def _run(self, *args, timeout=None):
        cmd = self.user.cmd(*args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.timeout + 30)
        if proc.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                             f"{proc.stderr}\n{_tail(self.logfile) if self.tmpdir else ''}")
        return proc

    def start(self) -> "BenchCluster":
        self.tmpdir = Path(tempfile.mkdtemp(prefix="kamw_bench_pg_"))
        self.user.own(self.tmpdir)
        self.port = free_port()
        pwfile = self.tmpdir / "pw"
        pwfile.write_text(self.superuser_password + "\n")
        self.user.own(pwfile)
        try:
            self._run(self.bin / "initdb", "-D", self.datadir, "-U", "postgres", "--pwfile", pwfile,
                      "--auth-local=trust", f"--auth-host={AUTH_METHOD}", "--no-sync", "-E", "UTF8",
                      "--locale=C")
            pwfile.unlink()
            hba = self.datadir / "pg_hba.conf"
            hba.write_text(
                "# kamw benchmark: password auth on TCP, trust only on the private Unix socket\n"
                "local all all trust\n"
                f"host all all 127.0.0.1/32 {AUTH_METHOD}\n"
            )
            self.user.own(hba)
            self._run(self.bin / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o",
                      self._options(), "-w", "-t", self.timeout, "start")
            with self.connect() as conn:
                conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD {_literal(self.password)}")
                conn.execute("CREATE EXTENSION pg_stat_statements")
                self.version = conn.execute("SHOW server_version").fetchone()[0]
                self.version_num = int(conn.execute("SHOW server_version_num").fetchone()[0])
                self.auth_check = conn.execute(
                    "SELECT rolpassword LIKE 'SCRAM-SHA-256$%%' FROM pg_authid WHERE rolname = %s",
                    [ROLE]).fetchone()[0]
        except BaseException:
            self.stop()
            raise
        return self

    def _options(self) -> str:
        return (
            f"-p {self.port} -k {self.tmpdir} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.max_connections} "
            f"-c password_encryption={AUTH_METHOD} "
            "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c shared_buffers=128MB"
        )

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated; returns once the server
        accepts connections again."""
        self._run(self.bin / "pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", self._options(),
                  "-m", "fast", "-w", "-t", self.timeout, "restart")

    def terminate(self, dbname: str) -> int:
        """``pg_terminate_backend`` every client session of ``dbname``; how many."""
        with self.connect() as conn:
            return len(conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()", [dbname]).fetchall())

    def connect(self, dbname: str = "postgres"):
        """An observer connection (superuser, password auth over TCP, autocommit)."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                               password=self.superuser_password, dbname=dbname, autocommit=True,
                               connect_timeout=5, application_name="kamw-bench-observer")

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" OWNER {ROLE}')

    def stop(self) -> None:
        if self.tmpdir is None:
            return
        try:
            if (self.datadir / "postmaster.pid").exists():
                try:
                    self._run(self.bin / "pg_ctl", "-D", self.datadir, "-m", "fast", "-w", "-t", 20, "stop")
                except (BenchError, subprocess.TimeoutExpired):
                    with contextlib.suppress(Exception):
                        self._run(self.bin / "pg_ctl", "-D", self.datadir, "-m", "immediate", "-w",
                                  "-t", 10, "stop")
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class PgBouncer:
    """PgBouncer in transaction mode in front of the cluster, on a free loopback port,
    clients and server both authenticated with scram-sha-256. ``settings``: more lines of
    its ``[pgbouncer]`` section (``server_login_retry``, ``query_wait_timeout``...)."""

    def __init__(self, cluster: BenchCluster, dbname: str, pool_size: int = 20,
                 settings: dict | None = None):
        self.cluster = cluster
        self.dbname = dbname
        self.pool_size = pool_size
        self.settings = dict(settings or {})
        self.user = _AsUser()
        self.tmpdir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def version() -> str | None:
        if not PGBOUNCER:
            return None
        out = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip() if out else None

    def start(self) -> "PgBouncer":
        if not PGBOUNCER:
            raise BenchError("pgbouncer not installed")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="kamw_bench_pgb_"))
        self.user.own(self.tmpdir)
        self.port = free_port()
        userlist = self.tmpdir / "userlist.txt"
        userlist.write_text(f'"{ROLE}" "{self.cluster.password}"\n')
        ini = self.tmpdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{self.dbname} = host=127.0.0.1 port={self.cluster.port} dbname={self.dbname}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = {AUTH_METHOD}\nauth_file = {userlist}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmax_client_conn = 500\n"
            f"logfile = {self.tmpdir / 'pgbouncer.log'}\npidfile = {self.tmpdir / 'pgbouncer.pid'}\n"
            "log_connections = 0\nlog_disconnections = 0\nlog_pooler_errors = 1\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            + "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        )
        for path in (userlist, ini):
            path.chmod(0o600)
            self.user.own(path)
        return self._launch()

    def _launch(self) -> "PgBouncer":
        ini = self.tmpdir / "pgbouncer.ini"
        self.proc = subprocess.Popen([PGBOUNCER, str(ini)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True, **self.user.popen_options())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"pgbouncer exited ({self.proc.returncode}): "
                                 f"{self.proc.stderr.read().decode(errors='replace')}"
                                 f"{_tail(self.tmpdir / 'pgbouncer.log')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise BenchError("pgbouncer did not listen within 10 s")

    def restart(self) -> None:
        """Stop (immediate shutdown: every connection dropped) and start again, same port
        and settings."""
        self._kill()
        self._launch()

    def stop(self) -> None:
        self._kill()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # pgbouncer's SIGTERM is an immediate shutdown.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# -- evidence ------------------------------------------------------------------------------


# The first statement of the benchmarked view (and task), once per request served
# (pg_stat_statements normalises it to this text): the server's own count of requests that
# reached the view.
VIEW_MARKER = 'SELECT COUNT(*) AS "__count" FROM "shop_row"'
VIEW_STATEMENTS = 3  # the fast view's: COUNT(*), ORDER BY id DESC LIMIT 1, SELECT 1


def counters(conn, dbname: str) -> dict:
    """Cumulative server-side counters of ``dbname`` (fresh snapshot)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    xacts, sessions = conn.execute(
        "SELECT xact_commit + xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
        [dbname]).fetchone()
    rows = conn.execute(
        "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = %s", [dbname]).fetchall()
    statements = Counter()
    for query, calls in rows:
        statements[" ".join(query.split())[:120]] += calls
    served = sum(calls for query, calls in statements.items() if query.startswith(VIEW_MARKER))
    return {"xacts": int(xacts), "sessions": int(sessions), "served": int(served),
            "statements": dict(statements)}


def client_sessions(conn, dbname: str) -> int:
    return conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
        [dbname]).fetchone()[0]


def settled_counters(cluster: BenchCluster, dbname: str, timeout: float = 20.0) -> dict:
    """Counters once every session of ``dbname`` ended (a backend flushes its statistics when
    it exits) and two reads agree. Stop the servers first."""
    with cluster.connect() as conn:
        deadline = time.monotonic() + timeout
        while client_sessions(conn, dbname):
            if time.monotonic() > deadline:
                raise BenchError(f"sessions of {dbname} did not end within {timeout} s")
            time.sleep(0.05)
        previous = counters(conn, dbname)
        while True:
            time.sleep(0.4)
            current = counters(conn, dbname)
            if (current["xacts"], current["sessions"]) == (previous["xacts"], previous["sessions"]):
                return current
            if time.monotonic() > deadline:
                raise BenchError(f"statistics of {dbname} did not settle")
            previous = current


class ActivitySampler:
    """Counts client sessions of one database in pg_stat_activity every ``interval`` s."""

    def __init__(self, cluster: BenchCluster, dbname: str, interval: float = 0.05):
        self.cluster = cluster
        self.dbname = dbname
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.last = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._conn = cluster.connect()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-sampler")

    def _run(self):
        try:
            while not self._stop.is_set():
                n = client_sessions(self._conn, self.dbname)
                self.last = n
                self.samples += 1
                self.peak = max(self.peak, n)
                self._stop.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc

    def start(self):
        self._thread.start()
        return self

    def now(self) -> int:
        return client_sessions(self._conn, self.dbname) if not self._thread.is_alive() else self.last

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(Exception):
            self._conn.close()
