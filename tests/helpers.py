"""Drive Django's real handlers and read the servers' own view of connections."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, Callable

import MySQLdb
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.db import connections
from django.test import RequestFactory

if TYPE_CHECKING:
    import psycopg

_wsgi: WSGIHandler | None = None
_asgi: ASGIHandler | None = None


def wsgi_get(path: str) -> tuple[int, str]:
    """Serve GET ``path`` through Django's WSGIHandler as a WSGI server would."""
    global _wsgi
    if _wsgi is None:
        _wsgi = WSGIHandler()
    status: list[str] = []
    response = _wsgi(RequestFactory().get(path).environ,
                     lambda s, headers, exc_info=None: status.append(s))
    try:
        body = b"".join(response)
    except Exception:  # a body that raises mid-stream: the server drops the connection
        return 0, ""
    finally:
        response.close()
    return int(status[0].split()[0]), body.decode()


def asgi_get(path: str) -> tuple[int, str]:
    """Serve GET ``path`` through Django's ASGIHandler in a fresh event loop."""
    global _asgi
    if _asgi is None:
        _asgi = ASGIHandler()
    messages: list[dict[str, Any]] = []

    async def run() -> None:
        received = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if not received.is_set():
                received.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client never hangs up
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                 "headers": [], "server": ("testserver", 80), "client": ("127.0.0.1", 1)}
        await _asgi(scope, receive, send)

    asyncio.run(run())
    body = b"".join(m.get("body", b"") for m in messages[1:])
    return messages[0]["status"], body.decode()


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in a new thread (as ASGI and gthread servers do) and return its result."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return result[0]


def pg_admin() -> psycopg.Connection:
    import psycopg  # not at the top: tests/psycopg2_script.py runs without it

    db = settings.DATABASES["default"]
    return psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                           password=db["PASSWORD"] or None, dbname="postgres",
                           autocommit=True)


def pg_sessions(admin: psycopg.Connection) -> list[tuple[int, str]]:
    """(pid, state) of every client session on the test database but the admin's."""
    name = connections["default"].settings_dict["NAME"]
    return admin.execute(
        "SELECT pid, state FROM pg_stat_activity WHERE datname = %s"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid() ORDER BY pid",
        [name],
    ).fetchall()


def pg_terminate_all(admin: psycopg.Connection) -> int:
    name = connections["default"].settings_dict["NAME"]
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()", [name],
    ).fetchall()
    return len(rows)


def my_admin() -> MySQLdb.Connection:
    db = settings.DATABASES["mysql"]
    conn = MySQLdb.connect(host=db["HOST"], port=int(db["PORT"]), user=db["USER"],
                           passwd=db["PASSWORD"])
    conn.autocommit(True)
    return conn


def my_sessions(admin: MySQLdb.Connection) -> list[tuple[int, int]]:
    """(id, open transaction 0/1) of every session on the MySQL test database."""
    name = connections["mysql"].settings_dict["NAME"]
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT p.ID, t.trx_id IS NOT NULL FROM information_schema.PROCESSLIST p"
            " LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID"
            " WHERE p.DB = %s AND p.ID <> CONNECTION_ID() ORDER BY p.ID", [name])
        return [(int(i), int(t)) for i, t in cursor.fetchall()]


def pg_sessions_gone(admin: psycopg.Connection, pids: set[int], attempts: int = 250) -> bool:
    """Whether the sessions ``pids`` have left pg_stat_activity, polling up to ~5 s.

    A backend leaves a moment after its client closed the connection. Counts attempts,
    not seconds: it works under freezegun's frozen clock.
    """
    import time

    for _ in range(attempts):
        if not pids & {pid for pid, _ in pg_sessions(admin)}:
            return True
        time.sleep(0.02)
    return False
