"""Views of the example project. They never commit: with EXAMPLE_AUTOCOMMIT=0 the
end-of-request handling (keepalive_mw's commit) is what persists writes."""

import asyncio
import os
import time

from django.db import connection
from django.http import HttpResponse, StreamingHttpResponse

from example.shop.models import Row

_PID_SQL = {
    "postgresql": "SELECT pg_backend_pid()",
    "mysql": "SELECT CONNECTION_ID()",
}


def _text(value):
    return HttpResponse(f"{value}\n", content_type="text/plain")


def backend_pid():
    """The database server's id of the session serving this request."""
    sql = _PID_SQL.get(connection.vendor)
    if sql is None:  # SQLite: no server; the process and the connection object.
        connection.ensure_connection()
        return f"{os.getpid()}-{id(connection.connection)}"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def health(request):
    """No database access: used to wait for a server to answer."""
    return _text("ok")


def index(request):
    count = Row.objects.count()
    last = Row.objects.order_by("-id").values_list("id", flat=True).first()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        one = cursor.fetchone()[0]
    return _text(f"rows={count} last={last} one={one}")


def pid(request):
    return _text(backend_pid())


def write(request):
    Row.objects.create(label="write")
    return _text(backend_pid())


def fail(request):
    Row.objects.create(label="fail")
    raise RuntimeError("example failure after a write: this row must not persist")


def read(request):
    return _text(Row.objects.count())


def stream(request):
    def chunks():
        for i in range(5):
            yield f"chunk {i} rows={Row.objects.count()}\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def sleep(request):
    """A write, then ``?s=`` seconds (default 0.5, at most 5) of sleep: a slow request
    that a client can abandon."""
    seconds = min(float(request.GET.get("s", "0.5")), 5.0)
    Row.objects.create(label="sleep")
    time.sleep(seconds)
    return _text(backend_pid())


async def slow(request):
    """An async view that awaits another service between two queries: a count, ``?ms=``
    milliseconds of await (default 100, at most 5000), the last row. The benchmark's slow
    view. In release mode "transaction" it holds no database session while it waits."""
    milliseconds = min(float(request.GET.get("ms", "100")), 5000.0)
    count = await Row.objects.acount()
    await asyncio.sleep(milliseconds / 1000)
    last = await Row.objects.order_by("-id").values_list("id", flat=True).afirst()
    return _text(f"rows={count} last={last}")


def slow_sync(request):
    """The slow view's queries in a sync view: a count, ``?ms=`` milliseconds of sleep
    (default 100, at most 5000), the last row. Under gthread and gevent the thread or
    greenlet holds what it took while it sleeps, unless release mode is "transaction"."""
    milliseconds = min(float(request.GET.get("ms", "100")), 5000.0)
    count = Row.objects.count()
    time.sleep(milliseconds / 1000)
    last = Row.objects.order_by("-id").values_list("id", flat=True).first()
    return _text(f"rows={count} last={last}")


def stream_fail(request):
    """A streamed response whose generator writes, then fails after the headers left."""

    def chunks():
        Row.objects.create(label="stream_fail")
        yield f"chunk 0 rows={Row.objects.count()}\n"
        raise RuntimeError("example failure in the middle of a streamed response")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def tenant_set(request):
    """Leave session state behind, as a per-tenant ``search_path`` would: ``app.tenant``
    set for the session (``set_config(..., false)``) to ``?t=``. PostgreSQL only."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('app.tenant', %s, false), pg_backend_pid()",
                       [request.GET["t"]])
        tenant, pid = cursor.fetchone()
    return _text(f"{tenant} {pid}")


def tenant(request):
    """The ``app.tenant`` of the session serving this request ("-" when unset)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(nullif(current_setting('app.tenant', true), ''), '-'),"
                       " pg_backend_pid()")
        tenant, pid = cursor.fetchone()
    return _text(f"{tenant} {pid}")


async def async_view(request):
    count = await Row.objects.acount()
    exists = await Row.objects.filter(label="write").aexists()
    return _text(f"rows={count} any_write={exists}")
