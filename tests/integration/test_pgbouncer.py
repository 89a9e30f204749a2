"""PgBouncer in front of PostgreSQL, in transaction and in session mode, with real gunicorn
workers (KEEPALIVE_POOLER set as the README says): client connections to PgBouncer kept
across requests, commit and rollback at request end, a restart of PgBouncer and a fast
restart of PostgreSQL behind it, what RESET_SESSION does there, and keepalive_status
reading PgBouncer's pools. Evidence from PgBouncer itself (its log's client logins, SHOW
CLIENTS, SHOW POOLS) and from pg_stat_activity."""

import json
import os
import shutil
import subprocess
import sys
import threading
import uuid

import psycopg
import pytest

from . import servers
from .pgbouncer import MODES, STATS_USER, PgBouncer, available

pytestmark = pytest.mark.servers

WORKERS = 2
WARMUP = 20
# 50 x (write, read, fail, write, read) = 100 /write/, 100 /read/, 50 /fail/
PATTERN = ["/write/", "/read/", "/fail/", "/write/", "/read/"]
TOTAL = 250
AFTER = 40
ROUNDS = 8  # of /tenant/set/ then /tenant/
# Transaction mode hands out the server session used least recently (server_round_robin),
# as concurrent clients would leave it to a lone test client.
TRANSACTION_SETTINGS = {"server_round_robin": 1}
CLUSTER_NEEDS = "a throwaway cluster needs root, runuser and PostgreSQL's initdb"


@pytest.fixture(scope="module")
def pgbouncer_ready():
    reason = available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: under CI=true PgBouncer tests fail, they are never "
                        "skipped (.ci/run installs pgbouncer)", pytrace=False)
        pytest.skip(reason)


def _bouncer(mode, target_port=5432):
    return PgBouncer(mode, target_port,
                     settings=TRANSACTION_SETTINGS if mode == "transaction" else None)


@pytest.fixture(scope="module")
def bouncers(pgbouncer_ready):
    """One PgBouncer per mode in front of the shared PostgreSQL."""
    started = {}
    try:
        for mode in MODES:
            started[mode] = _bouncer(mode).start()
        yield started
    finally:
        for bouncer in started.values():
            bouncer.stop()


def app_env(bouncer, dbname, appname, variant, **overrides):
    """The example project through ``bouncer``, with the settings the README asks for."""
    values = dict(EXAMPLE_DB_NAME=dbname, EXAMPLE_DB_PORT=bouncer.port,
                  EXAMPLE_VARIANT=variant, EXAMPLE_APPNAME=appname,
                  EXAMPLE_DISABLE_SERVER_SIDE_CURSORS="1",
                  KEEPALIVE_POOLER=json.dumps(bouncer.mode))
    values.update(overrides)
    return servers.example_env("postgresql", **values)


class App:
    """gunicorn (sync, WORKERS workers) serving the example project through a PgBouncer."""

    def __init__(self, server, bouncer, dbname, appname):
        self.server = server
        self.bouncer = bouncer
        self.dbname = dbname
        self.appname = appname

    def clients(self):
        """This app's client connections to PgBouncer: {port: connect_time}."""
        return self.bouncer.clients(self.dbname, self.appname)

    def warm_up(self):
        """Requests until every worker holds a client connection (sync workers compete for
        accept(): one may serve a small burst alone); bounded."""
        for _ in range(10):
            result = servers.run_load(self.server.port, "/", clients=4, total=WARMUP)
            assert not result.non_200, f"warm-up failed: {result.summary()}\n{self.stderr()}"
            kept = self.clients()
            if len(kept) >= WORKERS:
                break
        return kept

    def stderr(self):
        return self.server.stderr()[-3000:]


@pytest.fixture(scope="module", params=MODES)
def app(request, bouncers, pg_database, variant):
    bouncer = bouncers[request.param]
    appname = f"kamw_pgb_{request.param[:5]}_{uuid.uuid4().hex[:6]}"
    env = app_env(bouncer, pg_database.name, appname, variant, EXAMPLE_AUTOCOMMIT="0")
    with servers.Server("sync", env, workers=WORKERS) as server:
        yield App(server, bouncer, pg_database.name, appname)


def test_client_connections_to_pgbouncer_are_kept(app):
    """Every request on a new HTTP connection, and not one new login at PgBouncer."""
    kept = app.warm_up()
    logins = app.bouncer.logins(app.dbname)
    result = servers.run_load(app.server.port, "/", clients=4, total=200, keepalive=False)
    after = app.clients()
    new_logins = app.bouncer.logins(app.dbname) - logins
    evidence = (f"{app.bouncer.mode}: client connections (port: connect time) after warm-up "
                f"{kept}, after the load {after}; logins at PgBouncer during the load "
                f"{new_logins}; {result.summary()}\nserver stderr (tail):\n{app.stderr()}")
    print(evidence)
    assert not result.non_200 and len(result.responses) == 200, evidence
    assert len(kept) == WORKERS, f"expected one client connection per worker: {evidence}"
    assert after == kept, evidence
    assert new_logins == 0, evidence


def _open_transactions(app):
    states = servers.pg_session_states(app.dbname)
    return {state: n for state, n in states.items() if state.startswith("idle in transaction")}


def test_commit_on_success_rollback_on_failure(app, pg_database):
    """AUTOCOMMIT False: requests' transactions end at request end, whichever server
    session PgBouncer lent them; none is left idle in transaction on the server."""
    pg_database.truncate()
    result = servers.run_load(app.server.port, PATTERN, clients=4, total=TOTAL)
    try:  # the response leaves before request_finished commits (WSGI close())
        servers.wait_for(lambda: not _open_transactions(app), 5.0, 0.1, "no open transaction")
    except servers.HarnessError:
        pass
    open_trx = _open_transactions(app)
    sessions = dict(servers.pg_session_states(app.dbname))
    pool = app.bouncer.show("POOLS", app.dbname)
    writes = pg_database.count_rows("write")
    fails = pg_database.count_rows("fail")
    evidence = (f"{app.bouncer.mode}: {result.summary()}; rows write={writes} fail={fails}; "
                f"server sessions {sessions}, idle in transaction {open_trx}; "
                f"SHOW POOLS {pool}\nserver stderr (tail):\n{app.stderr()}")
    print(evidence)
    by_path = result.by_path()
    assert dict(by_path["/write/"]) == {200: 100}, evidence
    assert dict(by_path["/read/"]) == {200: 100}, evidence
    assert dict(by_path["/fail/"]) == {500: 50}, evidence
    assert writes == 100 and fails == 0, evidence
    assert not open_trx, evidence
    assert sessions, f"no server session at all: {evidence}"
    if app.bouncer.mode == "transaction":  # no client holds a server session between requests
        assert app.bouncer.settle(app.dbname)["sv_active"] == 0, evidence


def test_pgbouncer_restart_is_survived(app):
    """PgBouncer stopped (every client connection closed) and started between requests."""
    before = app.warm_up()
    app.bouncer.restart()
    result = servers.run_load(app.server.port, "/", clients=4, total=AFTER)
    after = app.clients()
    evidence = (f"{app.bouncer.mode}: client connections before the restart {before}, after "
                f"{after}; {result.summary()}\nserver stderr (tail):\n{app.stderr()}")
    print(evidence)
    assert len(before) == WORKERS, evidence
    assert len(result.responses) == AFTER and not result.non_200, evidence
    assert after and not (set(after) & set(before)), evidence


def test_keepalive_status_reads_pgbouncer_pools(app):
    app.warm_up()
    env = dict(app.server.env, KEEPALIVE_PGBOUNCER_ADMIN=json.dumps({"user": STATS_USER}))
    proc = status(env, "--fail-on", "cl-waiting>0", "--fail-on", "maxwait>1h")
    report = json.loads(proc.stdout)
    (alias,) = report["aliases"]
    (pool,) = alias["pooler"]["pools"]
    evidence = f"{app.bouncer.mode}: exit {proc.returncode}, {alias}\n{proc.stderr[-2000:]}"
    print(evidence)
    assert proc.returncode == 0 and report["failed_conditions"] == [], evidence
    assert pool["pool_mode"] == app.bouncer.mode and pool["user"] == "postgres", evidence
    assert pool["cl_active"] == WORKERS and pool["cl_waiting"] == 0, evidence
    assert not [w for w in alias["warnings"] if "POOLER" in w], evidence
    assert alias["server"]["sessions"]["count"] >= 1, evidence


def status_command(*args):
    """``manage.py keepalive_status --format json`` for the default alias."""
    return [sys.executable, "-m", "django", "keepalive_status", "--database", "default",
            "--format", "json", *args, "--settings", "example.settings"]


def status(env, *args, timeout=120):
    return subprocess.run(status_command(*args), env=env, cwd=servers.REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_waiting_clients_fail_the_probe(pgbouncer_ready, pg_database, variant):
    """One server connection, held in a transaction: a second client waits in PgBouncer's
    queue, and --fail-on cl-waiting>0 says so (read before the probe's own query waits)."""
    with PgBouncer("transaction", pool_size=1) as bouncer:
        env = app_env(bouncer, pg_database.name, "kamw_pgb_probe", variant,
                      KEEPALIVE_PGBOUNCER_ADMIN=json.dumps({"user": STATS_USER}))
        params = dict(host="127.0.0.1", port=bouncer.port, user="postgres",
                      dbname=pg_database.name, connect_timeout=5)
        with psycopg.connect(**params) as holder, \
                psycopg.connect(**params, autocommit=True) as waiter:
            holder.execute("SELECT 1")  # a transaction: the pool's one server connection
            waiting = threading.Thread(target=waiter.execute, args=("SELECT 1",))
            waiting.start()
            servers.wait_for(lambda: _waiting(bouncer, pg_database.name) == 1, 10, 0.05,
                             "the second client to wait")
            probe = subprocess.Popen(
                status_command("--fail-on", "cl-waiting>0", "--fail-on", "maxwait>1h"),
                env=env, cwd=servers.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            try:
                # The probe read the pools, then its own query joined the queue.
                servers.wait_for(lambda: _waiting(bouncer, pg_database.name) == 2, 60, 0.05,
                                 "the probe's own query to wait")
            finally:
                holder.rollback()
                waiting.join(10)
                out, err = probe.communicate(timeout=60)
    report = json.loads(out)
    evidence = f"exit {probe.returncode}: {report}\n{err[-2000:]}"
    print(evidence)
    (pool,) = report["aliases"][0]["pooler"]["pools"]
    assert probe.returncode == 1, evidence
    assert pool["cl_waiting"] == 1 and pool["sv_active"] == 1 and pool["maxwait"] > 0, evidence
    assert [f["condition"] for f in report["failed_conditions"]] == ["cl-waiting"], evidence


def _waiting(bouncer, dbname):
    return sum(pool["cl_waiting"] for pool in bouncer.show("POOLS", dbname))


def test_admin_console_through_both_drivers(bouncers, pg_database):
    """SHOW POOLS as keepalive_status sends it, with psycopg 3 (unprepared, autocommit)
    and with psycopg2: the console refuses the extended protocol and transactions."""
    from keepalive_mw import pgbouncer

    bouncer = bouncers["transaction"]
    with psycopg.connect(host="127.0.0.1", port=bouncer.port, user="postgres",
                         dbname=pg_database.name, autocommit=True) as client:
        client.execute("SELECT 1")
        drivers = [psycopg]
        try:
            import psycopg2

            drivers.append(psycopg2)
        except ImportError:
            pass
        for driver in drivers:
            params = pgbouncer.connect_params(
                {"HOST": "127.0.0.1", "PORT": bouncer.port, "USER": "postgres"},
                f"user={STATS_USER}", driver)
            for _ in range(7):  # past psycopg's prepare_threshold (5)
                pools = pgbouncer.show_pools(driver, params, pg_database.name)
            assert [(p["user"], p["pool_mode"]) for p in pools] == [("postgres", "transaction")]
            assert pools[0]["cl_active"] >= 1, (driver.__name__, pools)
    with psycopg.connect(host="127.0.0.1", port=bouncer.port, user=STATS_USER,
                         dbname="pgbouncer", autocommit=True) as console:
        for _ in range(5):
            console.execute("SHOW POOLS").fetchall()
        with pytest.raises(psycopg.errors.ProtocolViolation, match="extended query protocol"):
            console.execute("SHOW POOLS")  # the sixth: psycopg prepares it


# ---------------------------------------------------------------------------
# RESET_SESSION behind PgBouncer


def _tenant_rounds(port):
    """ROUNDS times: one request sets app.tenant for its session, the next reads the
    tenant of its own session. Returns [(set, pid, read, pid)]."""
    rounds = []
    for i in range(ROUNDS):
        status_set, body_set = servers.http_get(port, f"/tenant/set/?t=t{i}")
        status_read, body_read = servers.http_get(port, "/tenant/")
        assert (status_set, status_read) == (200, 200), (body_set, body_read)
        rounds.append((*body_set.split(), *body_read.split()))
    return rounds


def _check(env):
    """``manage.py check``: (exit status, output)."""
    proc = subprocess.run([sys.executable, "-m", "django", "check", "--settings",
                           "example.settings"], env=env, cwd=servers.REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_session_mode_reset_session_clears_what_a_request_left(bouncers, pg_database,
                                                               variant):
    """Session mode: a kept client connection keeps its server session, and PgBouncer's
    server_reset_query runs only when the client disconnects, so a request's session state
    reaches the next request unless RESET_SESSION is on."""
    bouncer = bouncers["session"]
    seen = {}
    for reset in (False, True):
        env = app_env(bouncer, pg_database.name, f"kamw_pgb_rs_{reset:d}", variant,
                      KEEPALIVE_RESET_SESSION=json.dumps(reset))
        with servers.Server("sync", env, workers=1) as server:
            seen[reset] = _tenant_rounds(server.port)
            stderr = server.stderr()[-2000:]
    code, out = _check(env)
    evidence = f"rounds without reset {seen[False]}, with {seen[True]}; check: {out}\n{stderr}"
    print(evidence)
    assert all(read == tenant for tenant, _p, read, _q in seen[False]), evidence
    assert all(read == "-" for _t, _p, read, _q in seen[True]), evidence
    assert code == 0 and "keepalive_mw.W013" in out and "E022" not in out, evidence


def test_transaction_mode_reset_session_is_an_error_and_isolates_nothing(
        bouncers, pg_database, variant):
    """Transaction mode: E022. A request sets a tenant and its reset runs, but on whichever
    server session PgBouncer lends the reset: the session the request changed goes back to
    the pool with the tenant, and another client of PgBouncer finds it there."""
    bouncer = bouncers["transaction"]
    env = app_env(bouncer, pg_database.name, "kamw_pgb_rt", variant,
                  KEEPALIVE_RESET_SESSION="true")
    code, out = _check(env)
    _open_server_sessions(bouncer, pg_database.name, 2)
    rounds = []
    with servers.Server("sync", env, workers=1) as server:
        for i in range(ROUNDS):
            status_set, body = servers.http_get(server.port, f"/tenant/set/?t=t{i}")
            assert status_set == 200, body
            # The one sync worker serves this once the request before has ended (its reset
            # included): the response leaves before the end of the request.
            assert servers.http_get(server.port, "/health/")[0] == 200
            rounds.append((body.strip(), _tenants_in_pool(bouncer, pg_database.name)))
        stderr = server.stderr()[-2000:]
    leaks = [(body, seen) for body, seen in rounds if body.split()[0] in seen.values()]
    evidence = (f"rounds (tenant set and server pid, then {{server pid: tenant}} read by "
                f"another client): {rounds}; check: {out}\n{stderr}")
    print(evidence)
    assert code == 1 and "keepalive_mw.E022" in out, evidence
    assert all(len(seen) >= 2 for _body, seen in rounds), evidence  # every session read
    assert leaks, f"no tenant outlived its request: {evidence}"


def _tenants_in_pool(bouncer, dbname):
    """``app.tenant`` on each of PgBouncer's server sessions for ``dbname``, read by another
    client: {server pid: tenant}. With server_round_robin each read gets the session idle
    the longest, so as many reads as sessions visit them all."""
    count = sum(p["sv_idle"] + p["sv_used"] for p in bouncer.show("POOLS", dbname))
    seen = {}
    with psycopg.connect(host="127.0.0.1", port=bouncer.port, user="postgres", dbname=dbname,
                         autocommit=True) as reader:
        for _ in range(count):
            tenant, pid = reader.execute(
                "SELECT coalesce(nullif(current_setting('app.tenant', true), ''), '-'),"
                " pg_backend_pid()").fetchone()
            seen[pid] = tenant
    return seen


def _open_server_sessions(bouncer, dbname, count):
    """Make PgBouncer open ``count`` server sessions for ``dbname``: as many clients in a
    transaction at once, then done."""
    params = dict(host="127.0.0.1", port=bouncer.port, user="postgres", dbname=dbname)
    clients = [psycopg.connect(**params) for _ in range(count)]
    try:
        for client in clients:
            client.execute("SELECT 1")  # each holds a server session until it ends
        for client in clients:
            # Ended, the server session goes back to the pool (PgBouncer closes one whose
            # client left in the middle of a transaction).
            client.rollback()
        servers.wait_for(lambda: sum(p["sv_idle"] + p["sv_used"] for p in bouncer.show(
            "POOLS", dbname)) >= count, 10, 0.05, f"{count} idle server sessions")
    finally:
        for client in clients:
            client.close()


# ---------------------------------------------------------------------------
# PostgreSQL restarted behind PgBouncer


@pytest.fixture(scope="module")
def cluster(pgbouncer_ready):
    if os.environ.get("CI") != "true" and (
            os.geteuid() != 0 or not shutil.which("runuser")
            or not (servers.PG_BIN / "initdb").exists()):
        pytest.skip(CLUSTER_NEEDS + " (never skipped under CI=true)")
    with servers.PgCluster() as cluster:
        servers.prepare_database("postgresql", "keepalive_example", port=cluster.port)
        yield cluster


@pytest.mark.parametrize("mode", MODES)
def test_postgresql_restart_behind_pgbouncer_is_survived(cluster, mode, variant):
    """A fast restart of PostgreSQL between requests ends every server session."""
    dbname = "keepalive_example"
    with _bouncer(mode, cluster.port) as bouncer:
        env = app_env(bouncer, dbname, f"kamw_pgb_pr_{mode[:5]}", variant)
        with servers.Server("sync", env, workers=WORKERS) as server:
            app = App(server, bouncer, dbname, env["EXAMPLE_APPNAME"])
            clients = app.warm_up()
            sessions = servers.pg_pids(dbname, port=cluster.port)
            cluster.restart()
            result = servers.run_load(server.port, "/", clients=4, total=AFTER)
            clients_after = app.clients()
            sessions_after = servers.pg_pids(dbname, port=cluster.port)
            stderr = app.stderr()
    evidence = (f"{mode}: client connections before {clients}, after {clients_after}; server "
                f"sessions before {sorted(sessions)}, after {sorted(sessions_after)}; "
                f"{result.summary()}\nserver stderr (tail):\n{stderr}")
    print(evidence)
    assert len(clients) == WORKERS and sessions, evidence
    assert len(result.responses) == AFTER and not result.non_200, evidence
    assert sessions_after and not (sessions_after & sessions), evidence
    if mode == "transaction":  # no client held a server session: PgBouncer hid the restart
        assert clients_after == clients, evidence
    else:  # PgBouncer closed the clients of the lost sessions; the workers replaced theirs
        assert clients_after and not (set(clients_after) & set(clients)), evidence
