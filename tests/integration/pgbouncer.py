"""A throwaway PgBouncer for integration tests, and what its admin console says.

:class:`PgBouncer` runs ``pgbouncer`` (as the ``postgres`` OS user when root: it refuses
root) on a free loopback port in front of a PostgreSQL server, every database name
forwarded (``* = host=… port=…``), clients trusted. ``restart()`` stops it (SIGTERM: an
immediate shutdown, every client connection closed) and starts it on the same port.
Evidence comes from PgBouncer itself: ``show("CLIENTS")`` and friends through its admin
console, and ``logins(dbname)``, the client logins its log recorded.

(bench/pg.py has its own PgBouncer, with scram-sha-256 and one database: the benchmark's
needs; the two share only the idea.)
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .servers import HarnessError, free_port, wait_for

BINARY = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
# The console's roles: STATS_USER may only SHOW (stats_users), as a monitoring probe would.
ADMIN_USER = "postgres"
STATS_USER = "kamw_stats"
MODES = ("transaction", "session")


class PgBouncer:
    """PgBouncer in ``mode`` in front of the PostgreSQL server on ``target_port``.

    ``settings``: more ``[pgbouncer]`` settings (``{"server_round_robin": 1}``).
    """

    def __init__(self, mode: str, target_port: int = 5432, *, pool_size: int = 10,
                 settings: dict | None = None, os_user: str = "postgres"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.target_port = target_port
        self.pool_size = pool_size
        self.settings = dict(settings or {})
        # Run as os_user only when root: pgbouncer refuses to run as root.
        self.entry = pwd.getpwnam(os_user) if os.geteuid() == 0 else None
        self.tmpdir: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def logfile(self) -> Path:
        return self.tmpdir / "pgbouncer.log"

    def _command(self, *args) -> list:
        args = [str(a) for a in args]
        if self.entry is None:
            return args
        return ["runuser", "-u", self.entry.pw_name, "--", *args]

    def _own(self, path: Path) -> None:
        if self.entry is not None:
            os.chown(path, self.entry.pw_uid, self.entry.pw_gid)

    def _write_config(self) -> Path:
        users = self.tmpdir / "userlist.txt"
        users.write_text(f'"{ADMIN_USER}" ""\n"{STATS_USER}" ""\n')
        settings = {
            "listen_addr": "127.0.0.1",
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",  # the user must still be in auth_file
            "auth_file": users,
            "admin_users": ADMIN_USER,
            "stats_users": STATS_USER,
            "pool_mode": self.mode,
            "default_pool_size": self.pool_size,
            "max_client_conn": 200,
            "logfile": self.logfile,
            "pidfile": self.tmpdir / "pgbouncer.pid",
            "log_connections": 1,  # logins() counts them
            "log_disconnections": 1,
            **self.settings,
        }
        ini = self.tmpdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.target_port}\n"
            "[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        for path in (users, ini):
            path.chmod(0o600)
            self._own(path)
        return ini

    def start(self) -> "PgBouncer":
        if BINARY is None:
            raise HarnessError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        if self.tmpdir is None:
            self.tmpdir = Path(tempfile.mkdtemp(prefix="kamw_pgbouncer_"))
            self._own(self.tmpdir)
            self.port = free_port()
        ini = self._write_config()
        # pgbouncer logs to stderr too: a file, never a pipe nobody reads (it would fill).
        with open(self.tmpdir / "stderr.log", "ab") as stderr:
            self.proc = subprocess.Popen(
                self._command(BINARY, ini), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=stderr, start_new_session=True)
        try:
            wait_for(self._accepts, 15, 0.05, f"pgbouncer to accept on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _accepts(self) -> bool:
        if self.proc.poll() is not None:
            stderr = (self.tmpdir / "stderr.log").read_text(errors="replace")
            raise HarnessError(f"pgbouncer exited ({self.proc.returncode}): {stderr[-3000:]}")
        try:
            with self.console():
                return True
        except Exception:  # noqa: BLE001 - not yet
            return False

    def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # The whole group: runuser and pgbouncer. SIGTERM is pgbouncer's immediate shutdown.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def restart(self) -> None:
        """Stop (every client and server connection closed) and start on the same port."""
        self._kill()
        self.start()

    def stop(self) -> None:
        self._kill()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __enter__(self) -> "PgBouncer":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    # -- evidence

    def console(self, user: str = STATS_USER):
        """A connection to the admin console (simple protocol, autocommit)."""
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=user, dbname="pgbouncer",
                               autocommit=True, connect_timeout=5)

    def show(self, what: str, database: str | None = None) -> list:
        """``SHOW <what>`` rows as dicts, only those of ``database`` when given."""
        with self.console() as conn:
            cursor = conn.execute(f"SHOW {what}", prepare=False)
            names = [column.name for column in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        return [row for row in rows if database is None or row.get("database") == database]

    def clients(self, database: str, application_name: str | None = None) -> dict:
        """Client connections to ``database``: {client port: connect_time}."""
        return {row["port"]: row["connect_time"] for row in self.show("CLIENTS", database)
                if application_name is None
                or (row.get("application_name") or "").startswith(application_name)}

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def logins(self, database: str) -> int:
        """Client logins to ``database`` the log recorded since the first start."""
        return self.log().count(f" login attempt: db={database} ")

    def settle(self, database: str, timeout: float = 10.0) -> dict:
        """The pool of ``database`` once no server connection is active; its SHOW POOLS row."""
        def idle():
            pools = self.show("POOLS", database)
            return pools[0] if pools and all(p["sv_active"] == 0 for p in pools) else None
        return wait_for(idle, timeout, 0.1, f"no active server connection for {database}")


def available() -> str | None:
    """Why PgBouncer cannot run here, or None."""
    if BINARY is None:
        return "pgbouncer is not installed"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "runuser is needed to run pgbouncer as the postgres OS user"
    return None

