"""What the database servers say about this application's connections (keepalive_status).

``report(alias)`` returns a plain dict, the documented JSON schema (README: "keepalive_status
JSON schema"); ``SCHEMA_VERSION`` changes only when a key is removed or changes meaning.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from django.db import connections

from . import attribution, conf, pgbouncer

SCHEMA_VERSION = 1
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)", "other")
# How many of the worst sessions each list names.
OFFENDERS = 5


def report(alias: str) -> dict[str, Any]:
    """Report one alias: settings in force, warnings, and the server's view of sessions."""
    wrapper = connections[alias]
    config = conf.config_for(alias)
    result: dict[str, Any] = {
        "alias": alias,
        "vendor": wrapper.vendor,
        "managed": config is not None,
        "settings": config.as_dict() if config else None,
        "warnings": warnings(alias, config),
        "server": None,
        "error": None,
        "pooler": None,
    }
    if config is not None and (config.pooler or config.pgbouncer_admin is not None):
        # First: through a saturated pooler the server's part waits in its queue like any
        # client, and the pools should say how things stood when the report began.
        result["pooler"] = pooler(wrapper, config)
        result["warnings"].extend(_mode_mismatch(config.pooler, result["pooler"]["pools"]))
    try:
        if wrapper.vendor == "postgresql":
            result["server"] = _postgresql(wrapper)
        elif wrapper.vendor == "mysql":
            result["server"] = _mysql(wrapper)
        elif wrapper.vendor == "sqlite":
            result["server"] = _sqlite(wrapper)
        else:
            result["error"] = f"no server report for the {wrapper.vendor} backend"
    except Exception as exc:  # an unreachable server is a finding, not a crash
        result["error"] = _one_line(exc)
    finally:
        wrapper.close()
    if config is not None and config.pooler == conf.POOLER_TRANSACTION and result["server"]:
        result["server"]["attribution"] = TRANSACTION_ATTRIBUTION
    return result


# Through a pooler, pg_stat_activity shows the pooler's server sessions.
SESSIONS_NOTE = {
    conf.POOLER_TRANSACTION: "the app's processes hold client connections to the pooler; "
    "the server sessions below are the pooler's, shared by all its clients and lent to one "
    "for a transaction at a time",
    conf.POOLER_SESSION: "the app's processes hold client connections to the pooler; each "
    "server session below is the pooler's, lent to one client connection for as long as it "
    "stays connected",
    None: "PGBOUNCER_ADMIN is set but POOLER is not: the sessions below may be the pooler's",
}
TRANSACTION_ATTRIBUTION = ("application_name of the client connection that used each server "
                           "session last (the pooler sets it per transaction)")


def pooler(wrapper: Any, config: conf.AliasConfig) -> dict[str, Any]:
    """What the pooler in front of the alias says: its pools, given PGBOUNCER_ADMIN."""
    result: dict[str, Any] = {
        "mode": config.pooler,
        "sessions_note": SESSIONS_NOTE[config.pooler],
        "pools": None,
        "error": None,
    }
    if config.pgbouncer_admin is None or wrapper.vendor != "postgresql":
        return result
    try:
        params = pgbouncer.connect_params(wrapper.settings_dict, config.pgbouncer_admin,
                                          wrapper.Database)
        result["pools"] = pgbouncer.show_pools(wrapper.Database, params,
                                               wrapper.settings_dict["NAME"])
    except Exception as exc:  # as for the server: a finding, in one line
        result["error"] = _one_line(exc)
    return result


def _mode_mismatch(mode: str | None, pools: list[dict[str, Any]] | None) -> list[str]:
    modes = sorted({pool["pool_mode"] for pool in pools or () if pool["pool_mode"]})
    if mode is None or not modes or modes == [mode]:
        return []
    return [f"POOLER is {mode!r} but PgBouncer pools this database in "
            f"{' and '.join(modes)} mode: the checks judged the settings against the wrong mode"]


def _one_line(exc: Exception) -> str:
    """The first line of an error: what failed (drivers add advice on further lines)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return " ".join(first.split()) or exc.__class__.__name__


def warnings(alias: str, config: conf.AliasConfig | None) -> list[str]:
    """Risky combinations of settings for ``alias``."""
    found = []
    db = connections.settings[alias]
    if config is None:
        if db.get("CONN_MAX_AGE"):
            found.append("not managed by keepalive_mw and CONN_MAX_AGE is set: under ASGI "
                         "every request opens a connection that is never reused")
        return found
    if not config.health_checks:
        found.append("health checks are off: a connection the server closed is handed out "
                     "and its request fails")
    if config.max_age is None and config.idle_timeout is None:
        found.append("no max age and no idle timeout: connections are never closed by "
                     "keepalive_mw, and sessions opened for a burst stay open")
    if config.ping_after is not None and config.max_age and config.ping_after >= config.max_age:
        found.append("PING_AFTER is not shorter than MAX_AGE: silent network failures are "
                     "only found by a failing query")
    if config.max_connections is not None and config.wait_timeout == 0:
        found.append("WAIT_TIMEOUT is 0: at the bound requests fail at once")
    if config.release == conf.TRANSACTION and not config.transaction_release:
        found.append("RELEASE is 'transaction' but this alias is released per request "
                     "(MySQL/MariaDB, AUTOCOMMIT off or RESET_SESSION: manage.py check "
                     "says which)")
    if not db.get("AUTOCOMMIT", True) and config.end_of_request == conf.ROLLBACK:
        found.append("AUTOCOMMIT is off and END_OF_REQUEST is 'rollback': every write that "
                     "is not committed explicitly is lost")
    return found


def _session(
    pid: int, state: str, connected: float | None, in_state: float | None,
    transaction: float | None, client: str | None, name: str | None,
) -> dict[str, Any]:
    origin = attribution.origin(name)
    return {
        "id": pid,
        "state": state if state in STATES else "other",
        "connected_seconds": connected,
        "state_seconds": in_state,
        "transaction_seconds": transaction,
        "client": client,
        "process": f"{origin.host}:{origin.pid}" if origin and origin.pid is not None else None,
        "application_name": name,
    }


def _summary(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    by_state = dict.fromkeys(STATES, 0)
    processes: dict[str, int] = {}
    for session in sessions:
        by_state[session["state"]] += 1
        key = session["process"] or session["client"] or "?"
        processes[key] = processes.get(key, 0) + 1
    waiting = [s for s in sessions if s["state"].startswith("idle in transaction")]
    return {
        "count": len(sessions),
        "by_state": by_state,
        "by_process": dict(sorted(processes.items())),
        "oldest": _worst(sessions, "connected_seconds"),
        "idle_in_transaction": _worst(waiting, "state_seconds"),
        "longest_transactions": _worst(sessions, "transaction_seconds"),
    }


def _worst(sessions: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    ranked = [s for s in sessions if s[key] is not None]
    ranked.sort(key=lambda s: s[key], reverse=True)
    return ranked[:OFFENDERS]


def _usage(in_use: int, app: int, limit: int, reserved: int = 0) -> dict[str, Any]:
    """Headroom: percentages of the connections clients can open (max_connections less
    those reserved for superusers and pg_use_reserved_connections), as named."""
    available = max(limit - reserved, 1)
    return {
        "max_connections": limit,
        "reserved_connections": reserved,
        "available_connections": available,
        "in_use": in_use,
        "in_use_by_app": app,
        "usage_percent": round(100 * in_use / available, 1),
        "app_usage_percent": round(100 * app / available, 1),
    }


def _postgresql(wrapper: Any) -> dict[str, Any]:
    with wrapper.cursor() as cursor:
        cursor.execute(
            "SELECT pid, coalesce(state, ''),"
            " extract(epoch FROM now() - backend_start)::float8,"
            " extract(epoch FROM now() - state_change)::float8,"
            " extract(epoch FROM now() - xact_start)::float8,"
            " host(client_addr), application_name,"
            " datname = current_database(), pid = pg_backend_pid()"
            " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        rows = cursor.fetchall()
        cursor.execute("SELECT current_setting('max_connections')::int,"
                       " current_setting('superuser_reserved_connections')::int"
                       " + coalesce(current_setting('reserved_connections', true)::int, 0)")
        limit, reserved = cursor.fetchone()
    # This app's sessions carry its configured name, as keepalive_mw sends it (maybe cut).
    configured = wrapper.settings_dict.get("OPTIONS", {}).get("application_name")
    sent = attribution.origin(attribution.application_name(configured, pid=0))
    name = sent.name if sent else None
    app: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for row in rows:
        if row[7] and not row[8]:  # this database, not this command's own session
            origin = attribution.origin(row[6])
            (app if origin and origin.name == name else others).append(_session(*row[:7]))
    return {
        "sessions": _summary(app),
        "other_sessions_on_database": _summary(others)["by_state"],
        "headroom": _usage(len(rows), len(app), limit, reserved),
        "attribution": "application_name",
    }


def _mysql(wrapper: Any) -> dict[str, Any]:
    with wrapper.cursor() as cursor:
        cursor.execute(
            "SELECT p.ID, p.COMMAND, p.TIME, t.trx_started IS NOT NULL,"
            " TIMESTAMPDIFF(SECOND, t.trx_started, NOW()), p.HOST, p.DB = DATABASE(),"
            " p.ID = CONNECTION_ID(), p.USER = SUBSTRING_INDEX(CURRENT_USER(), '@', 1)"
            " FROM information_schema.PROCESSLIST p"
            " LEFT JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id = p.ID"
        )
        rows = cursor.fetchall()
        cursor.execute("SELECT @@max_connections")
        (limit,) = cursor.fetchone()
    app = []
    for pid, command, seconds, in_trx, trx_seconds, host, same_db, mine, same_user in rows:
        if not same_db or mine or not same_user:
            continue
        state = "active" if command != "Sleep" else "idle"
        if command == "Sleep" and in_trx:
            state = "idle in transaction"
        app.append(_session(int(pid), state, None, float(seconds),
                            None if trx_seconds is None else float(trx_seconds), host, None))
    return {
        "sessions": _summary(app),
        "other_sessions_on_database": None,
        "headroom": _usage(len(rows), len(app), int(limit)),
        "attribution": "client host and port (MySQL sessions carry no process name)",
    }


def _sqlite(wrapper: Any) -> dict[str, Any]:
    name = str(wrapper.settings_dict["NAME"])
    with wrapper.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        (journal,) = cursor.fetchone()
    return {
        "file": name,
        "file_bytes": os.path.getsize(name) if os.path.exists(name) else None,
        "journal_mode": journal,
        "note": "SQLite has no server: each process opens the file itself, and no other "
                "process's connections can be seen from here.",
    }


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
