"""PgBouncer's admin console, read by keepalive_status: ``SHOW POOLS`` of an alias's database.

The console is PgBouncer's virtual database ``pgbouncer``. It speaks the simple query
protocol only and knows no transactions: with psycopg 3 every query goes unprepared in
autocommit (``execute(..., prepare=False)``; past its ``prepare_threshold`` psycopg would
prepare a repeated query, which the console refuses with "extended query protocol not
supported by admin console"). psycopg2 always uses the simple protocol.
"""

from __future__ import annotations

from typing import Any

ADMIN_DATABASE = "pgbouncer"
# What SHOW POOLS says per pool (database and user), as keepalive_status reports it.
POOL_COUNTS = ("cl_active", "cl_waiting", "sv_active", "sv_idle")
HIDDEN = "********"
CONNECT_TIMEOUT = 5  # seconds: an unreachable console is a finding, reported in one line


def _driver() -> Any:
    """The PostgreSQL driver Django would use: psycopg 3, else psycopg2, else None."""
    try:
        import psycopg

        return psycopg
    except ImportError:
        pass
    try:
        import psycopg2

        return psycopg2
    except ImportError:
        return None


def parse(value: str | dict[str, Any], driver: Any = None) -> dict[str, Any]:
    """Return the libpq keywords of a connection string or dict; ValueError if unreadable."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or isinstance(item, bool) or not isinstance(
                    item, (str, int)):
                raise ValueError("must map libpq keywords to strings or numbers")
        return dict(value)
    driver = driver or _driver()
    if driver is None:
        raise ValueError("cannot be read: neither psycopg nor psycopg2 is installed")
    try:
        if driver.__name__ == "psycopg2":
            from psycopg2.extensions import parse_dsn

            return parse_dsn(value)
        from psycopg.conninfo import conninfo_to_dict

        return conninfo_to_dict(value)
    except Exception:
        # libpq's message quotes the string, password included: not repeated here.
        raise ValueError("is not a valid libpq connection string") from None


def problem(value: Any) -> str | None:
    """Validate a PGBOUNCER_ADMIN value: None, a connection string or a dict of keywords."""
    if value is None:
        return None
    if not isinstance(value, (str, dict)):
        return "must be None, a libpq connection string or a dict of libpq keywords"
    try:
        params = parse(value)
    except ValueError as exc:
        return str(exc)
    dbname = params.get("dbname")
    if dbname not in (None, ADMIN_DATABASE):
        return (f"must connect to PgBouncer's admin console, the database "
                f"{ADMIN_DATABASE!r}, not {dbname!r}")
    return None


def redacted(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The keywords of a PGBOUNCER_ADMIN value with its password hidden, for reports."""
    if value is None:
        return None
    try:
        params = parse(value)
    except ValueError:
        return {"unreadable": HIDDEN}
    if "password" in params:
        params["password"] = HIDDEN
    return params


def connect_params(settings_dict: dict[str, Any], admin: str | dict[str, Any],
                   driver: Any = None) -> dict[str, Any]:
    """Keywords for the console: the alias's host, port, user and password (the alias
    points at PgBouncer), overridden by ``admin``; the database is always the console."""
    params: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    for key, name in (("host", "HOST"), ("port", "PORT"), ("user", "USER"),
                      ("password", "PASSWORD")):
        if settings_dict.get(name):
            params[key] = settings_dict[name]
    params.update(parse(admin, driver))
    params["dbname"] = ADMIN_DATABASE
    return params


def show_pools(driver: Any, params: dict[str, Any], dbname: str) -> list[dict[str, Any]]:
    """Return PgBouncer's pools of ``dbname`` (one per user), from ``SHOW POOLS``."""
    conn = driver.connect(**params)
    try:
        conn.autocommit = True  # the console refuses BEGIN
        if driver.__name__ == "psycopg2":
            cursor = conn.cursor()
            cursor.execute("SHOW POOLS")
        else:
            cursor = conn.execute("SHOW POOLS", prepare=False)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        conn.close()
    return [_pool(row) for row in rows if row.get("database") == dbname]


def _pool(row: dict[str, Any]) -> dict[str, Any]:
    pool: dict[str, Any] = {
        "database": row.get("database"),
        "user": row.get("user"),
        "pool_mode": row.get("pool_mode"),
    }
    for name in POOL_COUNTS:
        pool[name] = None if row.get(name) is None else int(row[name])
    # maxwait is whole seconds, maxwait_us the microseconds on top (PgBouncer 1.8+).
    seconds = row.get("maxwait")
    micros = row.get("maxwait_us") or 0
    pool["maxwait"] = None if seconds is None else round(int(seconds) + int(micros) / 1e6, 3)
    return pool
