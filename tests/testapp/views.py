import asyncio

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.http import HttpResponse, StreamingHttpResponse

from .models import Item


def backend_pid(alias):
    """Server-side id of the connection behind ``alias`` (as a string)."""
    connection = connections[alias]
    vendor = connection.vendor
    if vendor == "sqlite":
        connection.ensure_connection()
        return str(id(connection.connection))
    sql = "SELECT pg_backend_pid()" if vendor == "postgresql" else "SELECT CONNECTION_ID()"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return str(cursor.fetchone()[0])


def text(body, status=200):
    return HttpResponse(body, status=status, content_type="text/plain")


def pid(request, alias):
    return text(backend_pid(alias))


def write(request, alias):
    item = Item.objects.using(alias).create(name="write")
    return text(str(item.pk))


def fail(request, alias):
    Item.objects.using(alias).create(name="fail")
    raise RuntimeError("deliberate failure after write")


def read(request, alias):
    return text(str(Item.objects.using(alias).count()))


def noop(request):
    return text("ok")


def stream(request, alias):
    def chunks():
        for _ in range(3):
            count = Item.objects.using(alias).count()
            yield f"{backend_pid(alias)} {count}\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def async_count(request, alias):
    return text(str(await Item.objects.using(alias).acount()))


def status500(request, alias):
    Item.objects.using(alias).create(name="status500")
    return HttpResponse(status=503)


def stream_fail(request, alias):
    def chunks():
        Item.objects.using(alias).create(name="stream_fail")
        yield "written\n"
        raise RuntimeError("deliberate failure mid-stream")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


def leak_atomic(request, alias):
    from django.db import transaction

    transaction.atomic(using=alias).__enter__()  # never exited
    Item.objects.using(alias).create(name="leak_atomic")
    return text(backend_pid(alias))


def autocommit_off(request, alias):
    connections[alias].set_autocommit(False)  # never restored
    Item.objects.using(alias).create(name="autocommit_off")
    return text(backend_pid(alias))


def autocommit_state(request, alias):
    return text(f"{backend_pid(alias)} {connections[alias].get_autocommit()}")


def raw_begin(request, alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("INSERT INTO testapp_item (name, created) VALUES ('raw_begin', now())")
    return text(backend_pid(alias))


def dirty_session(request, alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SET statement_timeout = 4321")
        cursor.execute("SELECT pg_advisory_lock(4242)")
        cursor.execute("CREATE TEMPORARY TABLE scratch (x int)")
    return text(backend_pid(alias))


def session_state(request, alias):
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        timeout = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                       " AND pid = pg_backend_pid()")
        locks = cursor.fetchone()[0]
        cursor.execute("SELECT to_regclass('pg_temp.scratch') IS NOT NULL")
        temp = cursor.fetchone()[0]
    return text(f"{backend_pid(alias)} {timeout} {locks} {temp}")


def failed_query(request, alias):
    from django.db import DatabaseError

    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")
    except DatabaseError:
        pass
    return text(backend_pid(alias))


def astream_fail(request, alias):
    async def chunks():
        await Item.objects.using(alias).acreate(name="astream_fail")
        yield "written\n"
        raise RuntimeError("deliberate failure mid-stream")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


# Called between the two queries of the pause views (a test's barrier, a terminate-all):
# set by tests, None otherwise.
pause_hook = None


def _pause():
    if pause_hook is not None:
        pause_hook()


def pause(request, alias):
    """Query, pause (as a view awaiting another service would), query: both sessions."""
    first = backend_pid(alias)
    _pause()
    return text(f"{first} {backend_pid(alias)}")


async def apause(request, alias):
    first = await sync_to_async(backend_pid)(alias)
    if pause_hook is not None:
        await asyncio.to_thread(pause_hook)
    second = await sync_to_async(backend_pid)(alias)
    return text(f"{first} {second}")


def pause_atomic(request, alias):
    """The same inside one atomic block, with a row lock: one session throughout."""
    with transaction.atomic(using=alias):
        first = backend_pid(alias)
        list(Item.objects.using(alias).select_for_update().filter(name="locked"))
        _pause()
        second = backend_pid(alias)
    return text(f"{first} {second}")
