"""keepalive_status reports what the servers see, as text or JSON, and works as a probe."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from keepalive_mw import attribution, pgbouncer, status_text
from keepalive_mw.status import _usage
from tests.helpers import in_thread, my_admin, wsgi_get

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def status(*args):
    """Run the command; return (exit status, stdout)."""
    out = io.StringIO()
    try:
        call_command("keepalive_status", *args, stdout=out)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue()


def status_json(*args):
    code, out = status("--format", "json", *args)
    return code, json.loads(out)


@pytest.fixture
def worker_sessions():
    """Sessions as two other worker processes would hold them: one idle in transaction."""
    db = connections["default"].settings_dict
    opened = []
    for pid, in_transaction in ((4101, True), (4102, False)):
        conn = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"],
                               dbname=db["NAME"],
                               application_name=attribution.application_name(None, pid))
        conn.execute("SELECT 1")  # psycopg opens a transaction: left idle in it
        if not in_transaction:
            conn.commit()
        opened.append(conn)
    yield
    for conn in opened:
        conn.close()


def test_json_reports_states_processes_and_offenders(worker_sessions):
    in_thread(wsgi_get, "/pid/default/")  # a kept connection of this process
    code, report = status_json("--database", "default")
    assert code == 0 and report["schema_version"] == 1 and report["exit_status"] == 0
    (alias,) = report["aliases"]
    sessions = alias["server"]["sessions"]
    host = attribution.HOST[:20]
    by_process = sessions["by_process"]
    # This process may still hold sessions of threads that earlier tests left behind.
    assert by_process[f"{host}:4101"] == 1 and by_process[f"{host}:4102"] == 1
    assert by_process[f"{host}:{os.getpid()}"] >= 1
    assert sessions["count"] == sum(by_process.values())
    assert sessions["by_state"]["idle in transaction"] == 1
    assert sessions["by_state"]["idle"] == sessions["count"] - 1
    (waiting,) = sessions["idle_in_transaction"]
    assert waiting["process"] == f"{host}:4101" and waiting["transaction_seconds"] >= 0
    ages = [s["connected_seconds"] for s in sessions["oldest"]]
    assert ages == sorted(ages, reverse=True) and len(ages) == min(5, sessions["count"])
    headroom = alias["server"]["headroom"]
    assert headroom["in_use_by_app"] == sessions["count"] and headroom["max_connections"] > 0


def test_text_report_fits_100_columns_and_names_offenders(worker_sessions):
    code, out = status("--database", "default")
    assert code == 0
    assert all(len(line) <= 100 for line in out.splitlines())
    assert "idle in transaction 1" in out
    assert f"{attribution.HOST[:20]}:4101" in out
    assert "max age 600 s" in out


def test_fail_on_conditions_set_the_exit_status(worker_sessions):
    assert status("--database", "default", "--fail-on", "idle-in-transaction>0s")[0] == 1
    assert status("--database", "default", "--fail-on", "idle-in-transaction>1h")[0] == 0
    assert status("--database", "default", "--fail-on", "connections>1")[0] == 1
    assert status("--database", "default", "--fail-on", "usage>99%")[0] == 0
    code, out = status("--database", "default", "--fail-on", "connections>1")
    assert re.search(r"FAIL default: connections is \d+, over 1", out)


def test_mariadb_sessions_and_open_transactions_are_reported():
    admin = my_admin()
    with admin.cursor() as cursor:
        cursor.execute("USE `%s`" % connections["mysql"].settings_dict["NAME"])
        cursor.execute("START TRANSACTION")
        cursor.execute("SELECT COUNT(*) FROM testapp_item FOR UPDATE")
    try:
        code, report = status_json("--database", "mysql")
    finally:
        admin.rollback()
        admin.close()
    sessions = report["aliases"][0]["server"]["sessions"]
    assert code == 0
    assert sessions["by_state"]["idle in transaction"] == 1
    assert report["aliases"][0]["server"]["headroom"]["max_connections"] > 0


def test_sqlite_is_said_plainly():
    code, report = status_json("--database", "sqlite")
    server = report["aliases"][0]["server"]
    assert code == 0 and "SQLite has no server" in server["note"]


def test_unreachable_database_is_one_line_and_exit_status_2():
    code, out = status("--database", "pg_proxy")  # nothing listens on its port
    assert code == 2
    (line,) = [line for line in out.splitlines() if "unreachable" in line]
    assert "Traceback" not in out and "Connection refused" in line
    code, report = status_json("--database", "pg_proxy")
    assert code == 2 and report["aliases"][0]["error"]


def test_risky_settings_are_warned_about():
    from django.test import override_settings

    with override_settings(KEEPALIVE_HEALTH_CHECKS=False):
        report = status_json("--database", "default")[1]
    assert any("health checks are off" in w for w in report["aliases"][0]["warnings"])


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], "invalid choice"),
    (["--database", "nope"], "invalid choice"),
    (["--fail-on", "slowness>5s"], "idle-in-transaction, transaction, usage"),
    (["--fail-on", "usage>5s"], "usage takes a percentage"),
    (["--fail-on", "connections>5%"], "connections takes a count"),
    (["--fail-on", "cl-waiting>5s"], "cl-waiting takes a count"),
    (["--fail-on", "maxwait>5%"], "maxwait takes a duration"),
    (["--fail-on", "cl_waiting>0"], "no alias reported \\(default\\) sets PGBOUNCER_ADMIN"),
    (["--watch", "0"], "greater than 0"),
])
def test_bad_arguments_are_command_errors_with_the_choices(args, message):
    if args[-1] == "cl_waiting>0":
        args = ["--database", "default", *args]
    with pytest.raises(CommandError, match=message) as raised:
        call_command("keepalive_status", *args, stdout=io.StringIO())
    assert raised.value.returncode == 3  # Nagios UNKNOWN, not 1 (a condition holds)


@pytest.mark.parametrize("args", [
    ["--fail-on", "usage>80"],  # fine: a percentage without its sign
    ["--fail-on", "useage>80%"],
    ["--format", "xml"],
    ["--watch", "0"],
])
def test_usage_errors_exit_3_from_the_command_line(args):
    proc = subprocess.run(
        [sys.executable, "-m", "django", "keepalive_status", "--database", "sqlite", *args,
         "--settings", "tests.settings"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120,
        check=False,
    )
    expected = 0 if args == ["--fail-on", "usage>80"] else 3
    assert proc.returncode == expected, proc.stdout + proc.stderr
    if expected:
        assert "Traceback" not in proc.stderr and "error" in proc.stderr.lower(), proc.stderr


def test_headroom_percentages_are_of_the_connections_named():
    room = _usage(15, 3, 100, 3)
    assert room["available_connections"] == 97
    assert room["usage_percent"] == 15.5 and room["app_usage_percent"] == 3.1
    text = status_text._headroom(room)
    assert text.startswith("15 of 97 connections in use (15.5%), 3 by this app (3.1%)")
    assert "max_connections 100 less 3 reserved" in text


def test_headroom_on_the_server_agrees_with_its_label():
    _code, report = status_json("--database", "default")
    room = report["aliases"][0]["server"]["headroom"]
    assert room["available_connections"] == room["max_connections"] - room[
        "reserved_connections"]
    assert room["usage_percent"] == round(100 * room["in_use"] / room["available_connections"], 1)
    out = status("--database", "default")[1]
    used, of, percent = re.search(r"(\d+) of (\d+) connections in use \(([\d.]+)%\)",
                                  out).groups()
    assert float(percent) == round(100 * int(used) / int(of), 1), out


def test_json_schema_is_stable():
    code, report = status_json()
    assert set(report) == {"schema_version", "generated_at", "aliases", "failed_conditions",
                           "exit_status"}
    for alias in report["aliases"]:
        assert set(alias) == {"alias", "vendor", "managed", "settings", "warnings", "server",
                              "error", "pooler"}
        server = alias["server"]
        if alias["error"] or alias["vendor"] == "sqlite":
            continue
        assert set(server) == {"sessions", "other_sessions_on_database", "headroom",
                               "attribution"}
        assert set(server["sessions"]) == {"count", "by_state", "by_process", "oldest",
                                           "idle_in_transaction", "longest_transactions"}
        assert set(server["headroom"]) == {"max_connections", "reserved_connections",
                                           "available_connections", "in_use",
                                           "in_use_by_app", "usage_percent",
                                           "app_usage_percent"}
        for session in server["sessions"]["oldest"]:
            assert set(session) == {"id", "state", "connected_seconds", "state_seconds",
                                    "transaction_seconds", "client", "process",
                                    "application_name"}


def test_application_name_keeps_the_configured_name_first():
    name = attribution.application_name("billing-web", 77)
    assert name.startswith("billing-web keepalive_mw ") and name.endswith(":77")
    assert attribution.origin(name) == ("billing-web", attribution.HOST[:20], 77)
    assert len(attribution.application_name("x" * 200, 12345).encode()) <= 63
    long_name = attribution.application_name("y" * 40, 12345)
    assert long_name.startswith("y" * 40) and attribution.origin(long_name).pid == 12345
    assert attribution.origin("psql") is None


def test_through_a_transaction_pooler_every_process_sends_the_same_name():
    """The pooler sends SET application_name whenever it lends a server session to a
    client whose name differs from the last one's: one name for all processes costs none."""
    name = attribution.application_name("billing-web", 77, per_process=False)
    assert name == attribution.application_name("billing-web", 78, per_process=False)
    assert name == "billing-web keepalive_mw"
    assert attribution.origin(name) == ("billing-web", None, None)
    assert len(attribution.application_name("x" * 200, per_process=False).encode()) <= 63


POOLS = [
    {"database": "test", "user": "postgres", "pool_mode": "transaction", "cl_active": 8,
     "cl_waiting": 3, "sv_active": 2, "sv_idle": 0, "maxwait": 2.5},
    {"database": "test", "user": "report", "pool_mode": "transaction", "cl_active": 1,
     "cl_waiting": 1, "sv_active": 1, "sv_idle": 1, "maxwait": 0.25},
]


@pytest.fixture
def pgbouncer_pools(monkeypatch, settings):
    """The default alias goes through PgBouncer in transaction mode, whose console says
    POOLS; the parameters keepalive_status connected with are recorded."""
    settings.KEEPALIVE_POOLER = "transaction"
    settings.KEEPALIVE_PGBOUNCER_ADMIN = {"user": "stats", "password": "s3cret", "port": 6432}
    asked = []

    def show_pools(driver, params, dbname):
        asked.append((driver.__name__, params, dbname))
        return [dict(pool, database=dbname) for pool in POOLS]

    monkeypatch.setattr(pgbouncer, "show_pools", show_pools)
    return asked


def test_pgbouncer_pools_are_reported(pgbouncer_pools):
    code, report = status_json("--database", "default")
    (alias,) = report["aliases"]
    ((driver, params, dbname),) = pgbouncer_pools
    db = connections["default"].settings_dict
    assert (driver, dbname) == ("psycopg", db["NAME"])
    assert params == {"connect_timeout": 5, "host": db["HOST"], "port": 6432, "user": "stats",
                      "password": "s3cret", "dbname": "pgbouncer"}
    pooler = alias["pooler"]
    assert code == 0 and pooler["mode"] == "transaction" and pooler["error"] is None
    assert [p["user"] for p in pooler["pools"]] == ["postgres", "report"]
    assert "shared by all its clients" in pooler["sessions_note"]
    assert alias["server"]["attribution"].startswith("application_name of the client")
    assert alias["settings"]["PGBOUNCER_ADMIN"]["password"] == "********"
    assert "s3cret" not in json.dumps(report)
    code, out = status("--database", "default")
    assert all(len(line) <= 100 for line in out.splitlines())
    assert f"{db['NAME']}/postgres (transaction): cl_active 8 · cl_waiting 3 · sv_active 2" in out
    assert "maxwait 2.5 s" in out and "pooler transaction mode" in out
    assert "s3cret" not in out


def test_pgbouncer_conditions_set_the_exit_status(pgbouncer_pools):
    assert status("--database", "default", "--fail-on", "cl-waiting>3")[0] == 1  # 3 + 1
    assert status("--database", "default", "--fail-on", "cl_waiting>4")[0] == 0
    assert status("--database", "default", "--fail-on", "maxwait>2s")[0] == 1
    assert status("--database", "default", "--fail-on", "maxwait>1m")[0] == 0
    code, report = status_json("--database", "default", "--fail-on", "maxwait>2s")
    assert report["failed_conditions"] == [
        {"alias": "default", "condition": "maxwait", "value": 2.5, "limit": 2.0}]
    out = status("--database", "default", "--fail-on", "cl-waiting>0")[1]
    assert "FAIL default: cl-waiting is 4, over 0" in out


def test_pool_mode_other_than_pooler_is_a_warning(pgbouncer_pools, settings):
    settings.KEEPALIVE_POOLER = "session"
    warnings = status_json("--database", "default")[1]["aliases"][0]["warnings"]
    assert ("POOLER is 'session' but PgBouncer pools this database in transaction mode: "
            "the checks judged the settings against the wrong mode") in warnings


def test_unreachable_pgbouncer_console_is_one_line_and_exit_status_2(settings):
    settings.KEEPALIVE_POOLER = "session"
    settings.KEEPALIVE_PGBOUNCER_ADMIN = "port=1"  # nothing listens there
    code, out = status("--database", "default")
    assert code == 2
    (line,) = [line for line in out.splitlines() if "unreachable" in line]
    assert line.strip().startswith("pgbouncer") and "Traceback" not in out
    code, report = status_json("--database", "default")
    alias = report["aliases"][0]
    assert code == 2 and alias["error"] is None and alias["pooler"]["error"]


def test_pooler_without_console_says_whose_sessions_these_are(settings):
    settings.KEEPALIVE_POOLER = "session"
    code, report = status_json("--database", "default")
    pooler = report["aliases"][0]["pooler"]
    assert code == 0 and pooler["pools"] is None and pooler["error"] is None
    assert "lent to one client connection" in pooler["sessions_note"]
    out = status("--database", "default")[1]
    assert "each server session below is the pooler's" in " ".join(out.split())


def test_direct_aliases_have_no_pooler_entry():
    report = status_json("--database", "default")[1]
    assert report["aliases"][0]["pooler"] is None
