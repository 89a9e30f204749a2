"""Run by tests/test_psycopg2.py in a process where psycopg 3 cannot be imported."""

import os
import sys
import time

sys.modules["psycopg"] = None  # Django's PostgreSQL backend falls back to psycopg2
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"

import django  # noqa: E402

django.setup()

import psycopg2  # noqa: E402
from django.db.backends.postgresql.psycopg_any import is_psycopg3  # noqa: E402

from keepalive_mw import get_stats  # noqa: E402
from tests.helpers import in_thread, wsgi_get  # noqa: E402

assert not is_psycopg3
pids = {in_thread(wsgi_get, "/pid/default/")[1] for _ in range(5)}
(pid,) = pids
admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
admin.autocommit = True
with admin.cursor() as cursor:
    cursor.execute("SELECT pg_terminate_backend(%s)", [int(pid)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [int(pid)])
        if cursor.fetchone()[0] == 0:
            break
        time.sleep(0.02)
results = [in_thread(wsgi_get, "/pid/default/") for _ in range(10)]
stats = get_stats()["default"]
print("reused", len(pids) == 1,
      "statuses", sorted({status for status, _ in results}),
      "new_pids", len({body for _, body in results}),
      "closed_broken", stats["connections_closed_broken"])

if os.environ.get("KEEPALIVE_TEST_RELEASE") == "transaction":
    # Release mode "transaction" reads psycopg2's own transaction status.
    from django.db import connections, transaction

    import keepalive_mw

    def backend_pid():
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    def unit():
        front = connections["default"]
        backend_pid()
        released = front.connection is None
        with transaction.atomic():
            first = backend_pid()
            same_in_atomic = backend_pid() == first and front.connection is not None
        with front.cursor() as cursor:
            cursor.execute("BEGIN")
        held_in_raw_transaction = front.connection is not None
        with front.cursor() as cursor:
            cursor.execute("COMMIT")
        with front.chunked_cursor() as named:
            named.execute("SELECT generate_series(1, 3)")
            named.fetchone()
            with front.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM pg_cursors")
                cursor_in_session = cursor.fetchone()[0] == 1
        return (released and same_in_atomic and held_in_raw_transaction
                and cursor_in_session and front.connection is None)

    print("transaction_mode", in_thread(keepalive_mw.scope()(unit)))
