"""System checks: invalid keepalive_mw configuration fails ``manage.py check``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from . import conf

TAG = "keepalive_mw"


def register() -> None:
    checks.register(check_settings, TAG)
    checks.register(check_databases, TAG)
    checks.register(check_middleware, TAG)
    checks.register(check_integrations, TAG)


def _error(option: conf.Option, problem: str, where: str) -> checks.Error:
    return checks.Error(
        f"{where} {problem}.",
        hint=f"{option.setting}: {option.meaning} (default {option.default!r}).",
        id=f"keepalive_mw.{option.check_id}",
    )


def check_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for option in conf.OPTIONS + conf.GLOBAL_OPTIONS:
        problem = option.validate(conf.global_value(option))
        if problem:
            errors.append(_error(option, problem, option.setting))
    if conf.global_value(conf.PROMETHEUS) is True and not _importable("prometheus_client"):
        errors.append(checks.Warning(
            "KEEPALIVE_PROMETHEUS is True but prometheus_client is not installed: "
            "no metrics are exported.",
            hint="python -m pip install prometheus_client, or set KEEPALIVE_PROMETHEUS = False.",
            id="keepalive_mw.W008",
        ))
    known = {option.setting for option in conf.OPTIONS + conf.GLOBAL_OPTIONS}
    for name in dir(settings):
        if name.startswith(conf.SETTING_PREFIX) and name not in known:
            errors.append(checks.Warning(
                f"Unknown setting {name}: keepalive_mw ignores it.",
                hint="Known settings: " + ", ".join(sorted(known)) + ".",
                id="keepalive_mw.W003",
            ))
    return errors


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def check_databases(**kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for alias, db in settings.DATABASES.items():
        overrides = db.get(conf.ALIAS_KEY, True)
        if isinstance(overrides, dict):
            for name, value in overrides.items():
                option = conf.OPTIONS_BY_NAME.get(name)
                if option is None:
                    errors.append(checks.Error(
                        f"{conf.alias_setting(alias)} has an unknown key {name!r}.",
                        hint="Keys are the setting names without KEEPALIVE_: "
                        + ", ".join(conf.OPTIONS_BY_NAME) + ".",
                        id="keepalive_mw.E011",
                    ))
                    continue
                problem = option.validate(value)
                if problem:
                    errors.append(_error(option, problem, conf.alias_setting(alias, name)))
        elif not isinstance(overrides, bool):
            errors.append(checks.Error(
                f"{conf.alias_setting(alias)} must be True, False or a dict.",
                hint="False leaves the alias to Django; a dict overrides KEEPALIVE_* settings "
                "for this alias, e.g. {'MAX_AGE': 60}.",
                id="keepalive_mw.E010",
            ))
            continue
        if overrides is False:
            continue
        errors.extend(_conflicts(alias, db))
    return errors


def _conflicts(alias: str, db: dict[str, Any]) -> list[checks.CheckMessage]:
    found: list[checks.CheckMessage] = []
    if conf.uses_native_pool(alias):
        found.append(checks.Warning(
            f"Database alias {alias!r} uses Django's connection pool (OPTIONS['pool']): "
            "keepalive_mw leaves it to that pool.",
            hint=f"Either remove OPTIONS['pool'] so that keepalive_mw keeps its connections, "
            f"or set DATABASES[{alias!r}]['KEEPALIVE'] = False to say that the pool is meant.",
            id="keepalive_mw.W004",
        ))
        return found
    if db.get("CONN_MAX_AGE", 0) != 0:
        found.append(checks.Warning(
            f"Database alias {alias!r} sets CONN_MAX_AGE, which keepalive_mw replaces: "
            "it is ignored for this alias.",
            hint="Set CONN_MAX_AGE to 0 (or remove it) and use KEEPALIVE_MAX_AGE, or set "
            f"DATABASES[{alias!r}]['KEEPALIVE'] = False to leave the alias to Django.",
            id="keepalive_mw.W005",
        ))
    if db.get("CONN_HEALTH_CHECKS"):
        found.append(checks.Warning(
            f"Database alias {alias!r} sets CONN_HEALTH_CHECKS, which keepalive_mw "
            "replaces: it is ignored for this alias.",
            hint="Remove CONN_HEALTH_CHECKS; KEEPALIVE_HEALTH_CHECKS checks kept connections "
            "without a round trip per request.",
            id="keepalive_mw.W006",
        ))
    overrides = db.get(conf.ALIAS_KEY)
    values = _values(overrides if isinstance(overrides, dict) else {})
    engine = db.get("ENGINE", "")
    found.extend(_release_conflicts(alias, db, overrides if isinstance(overrides, dict) else {}))
    if values["RESET_SESSION"]:
        if "postgresql" not in engine:
            found.append(checks.Warning(
                f"KEEPALIVE_RESET_SESSION is only partly supported for alias {alias!r} "
                f"({engine}).",
                hint="MySQL/MariaDB: named locks are released, session variables and "
                "temporary tables are not. SQLite: nothing is reset.",
                id="keepalive_mw.W007",
            ))
    found.extend(_pooler(alias, db, values))
    return found


def _values(overrides: dict[str, Any]) -> dict[str, Any]:
    """The alias's settings by name; None for an invalid one (reported on its own)."""
    values = {}
    for option in conf.OPTIONS:
        value = conf.value_for(overrides, option)
        values[option.name] = None if option.validate(value) else value
    return values


def _pooler(alias: str, db: dict[str, Any], values: dict[str, Any]) -> list[checks.CheckMessage]:
    """Settings that do not fit the pooler (PgBouncer) the alias goes through."""
    mode = values["POOLER"]
    where = conf.alias_setting(alias, "POOLER")
    if mode is None:
        if values["PGBOUNCER_ADMIN"] is not None:
            return [checks.Warning(
                f"Database alias {alias!r} sets PGBOUNCER_ADMIN but no POOLER: "
                "keepalive_status reads PgBouncer's pools, but the checks cannot judge the "
                "alias's settings against PgBouncer's pool mode.",
                hint=f"Set {where} (or KEEPALIVE_POOLER) to PgBouncer's pool_mode, "
                "'transaction' or 'session'.",
                id="keepalive_mw.W014",
            )]
        return []
    engine = db.get("ENGINE", "")
    if "postgresql" not in engine:
        return [checks.Error(
            f"Database alias {alias!r} ({engine}) has POOLER {mode!r}, but the poolers it "
            "names (PgBouncer, PgCat, Odyssey, Supavisor) serve PostgreSQL only.",
            hint=f"Set {where} = None (KEEPALIVE_POOLER applies to every alias that does "
            "not override it).",
            id="keepalive_mw.E020",
        )]
    if mode == conf.POOLER_SESSION:
        bound = values["MAX_CONNECTIONS"]
        per_process = (f"MAX_CONNECTIONS ({bound})" if bound is not None else
                       "the most requests a process serves at once (its threads; MAX_CONNECTIONS "
                       "is unset)")
        return [checks.Warning(
            f"Database alias {alias!r} goes through a pooler in session mode: each connection "
            "keepalive_mw keeps pins one of the pooler's server connections for as long as it "
            "is kept.",
            hint="Size PgBouncer's default_pool_size (per database and user) to at least "
            f"processes per host x {per_process} x hosts, or clients queue until "
            "query_wait_timeout; set KEEPALIVE_MAX_CONNECTIONS to bound each process, or use "
            "transaction mode. Silence this with SILENCED_SYSTEM_CHECKS once sized.",
            id="keepalive_mw.W013",
        )]
    found: list[checks.CheckMessage] = []
    if not db.get("DISABLE_SERVER_SIDE_CURSORS"):
        found.append(checks.Error(
            f"Database alias {alias!r} goes through a pooler in transaction mode but does not "
            "set DISABLE_SERVER_SIDE_CURSORS = True.",
            hint="QuerySet.iterator() outside atomic() declares a server-side cursor WITH HOLD "
            "and fetches from it in later transactions, which the pooler may send to another "
            "server session, where the cursor does not exist (Django's docs: \"Transaction "
            f"pooling and server-side cursors\"). Set DATABASES[{alias!r}]"
            "['DISABLE_SERVER_SIDE_CURSORS'] = True.",
            id="keepalive_mw.E021",
        ))
    if values["RESET_SESSION"]:
        found.append(checks.Error(
            f"Database alias {alias!r} resets sessions (RESET_SESSION) through a pooler in "
            "transaction mode: the reset runs on whichever server session the pooler hands "
            "out for it, not on the ones the request used.",
            hint="Its statements (RESET ALL, pg_advisory_unlock_all(), DISCARD TEMP...) may "
            "clear the state another client left on that session and leave this request's "
            "for the next client of its own: the reset promises what transaction mode cannot "
            f"keep. Set {conf.alias_setting(alias, 'RESET_SESSION')} = False and keep session "
            "state out of requests (SET LOCAL, pg_advisory_xact_lock), or use session mode.",
            id="keepalive_mw.E022",
        ))
    return found


def _release_conflicts(alias: str, db: dict[str, Any],
                       overrides: dict[str, Any]) -> list[checks.CheckMessage]:
    """What keeps RELEASE = "transaction" from working as asked on ``alias``."""
    if conf.value_for(overrides, conf.OPTIONS_BY_NAME["RELEASE"]) != conf.TRANSACTION:
        return []
    where = (conf.alias_setting(alias, "RELEASE") if "RELEASE" in overrides
             else "KEEPALIVE_RELEASE")
    just_this = (f"DATABASES[{alias!r}]['KEEPALIVE'] = {{'RELEASE': 'request'}}")
    found: list[checks.CheckMessage] = []
    if conf.vendor_of(alias) not in conf.TRANSACTION_RELEASE_VENDORS:
        found.append(checks.Error(
            f"{where} is 'transaction' but the backend of alias {alias!r} "
            f"({db.get('ENGINE', '')}) cannot tell without a round trip whether a "
            "transaction is open: its units of work keep their session to the end, as "
            "with 'request'.",
            hint="Release mode 'transaction' needs PostgreSQL (psycopg 3 or psycopg2) or "
            "SQLite: mysqlclient does not expose the server's in-transaction flag, so a "
            f"transaction begun with raw SQL would be split. Set {just_this}.",
            id="keepalive_mw.E025",
        ))
    if conf.value_for(overrides, conf.OPTIONS_BY_NAME["RESET_SESSION"]):
        found.append(checks.Error(
            f"{where} is 'transaction' and KEEPALIVE_RESET_SESSION is on for alias "
            f"{alias!r}: the two exclude each other, so the alias keeps 'request'.",
            hint="RESET_SESSION is for code that changes session state (SET, temporary "
            "tables, advisory locks); in release mode 'transaction' such state cannot "
            "follow a unit from one transaction to the next, and a reset per transaction "
            "would cost a round trip each. Keep 'request' with RESET_SESSION, or turn "
            "RESET_SESSION off and keep session state inside keepalive_mw.hold_session().",
            id="keepalive_mw.E026",
        ))
    if not db.get("AUTOCOMMIT", True):
        found.append(checks.Warning(
            f"{where} is 'transaction' but alias {alias!r} has AUTOCOMMIT False: it is "
            "always inside a transaction, never idle between two, so its units of work "
            "keep their session to the end, as with 'request'.",
            hint=f"Turn AUTOCOMMIT on for this alias, or set {just_this} to say so.",
            id="keepalive_mw.W016",
        ))
    if db.get("ATOMIC_REQUESTS"):
        found.append(checks.Warning(
            f"{where} is 'transaction' and alias {alias!r} has ATOMIC_REQUESTS: each view "
            "runs in one transaction, which holds its session until the view returns.",
            hint="Release mode 'transaction' then only frees the session around the view "
            "(middleware, streamed bodies). Wrap the writes that need it in "
            f"transaction.atomic() instead, or set {just_this}.",
            id="keepalive_mw.W017",
        ))
    return found


def check_middleware(**kwargs: Any) -> list[checks.CheckMessage]:
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if conf.MIDDLEWARE_PATH not in middleware:
        return [checks.Warning(
            f"{conf.MIDDLEWARE_PATH} is not in MIDDLEWARE: keepalive_mw cannot tell a "
            "failed request from a successful one, so it rolls back every transaction "
            "left open at request end.",
            hint=f"Add {conf.MIDDLEWARE_PATH!r} first in MIDDLEWARE.",
            id="keepalive_mw.W001",
        )]
    if middleware[0] != conf.MIDDLEWARE_PATH:
        return [checks.Warning(
            f"{conf.MIDDLEWARE_PATH} is not first in MIDDLEWARE: a middleware before it can "
            "turn a response into an error it does not see.",
            hint=f"Move {conf.MIDDLEWARE_PATH!r} to the top of MIDDLEWARE.",
            id="keepalive_mw.W002",
        )]
    return []


def check_integrations(**kwargs: Any) -> list[checks.CheckMessage]:
    """Integrations that are on but cannot do their job, or settings they make moot."""
    from .integrations import celery, channels, django_tasks

    found: list[checks.CheckMessage] = []
    if conf.enabled(conf.CELERY) and celery.installed_here():
        if not celery.fixup_adjustable():
            found.append(checks.Warning(
                "Celery's Django fixup is not laid out as keepalive_mw expects: it may close "
                "kept connections before and after every task, so workers reconnect per task.",
                hint="Report your Celery version to keepalive_mw. Tasks still end their "
                "transactions and connections are still checked before reuse.",
                id="keepalive_mw.W009",
            ))
        if getattr(settings, "CELERY_DB_REUSE_MAX", None) is not None:
            found.append(checks.Warning(
                "CELERY_DB_REUSE_MAX is set, but keepalive_mw keeps its connections across "
                "tasks: it only applies to aliases keepalive_mw leaves to Django.",
                hint="Remove CELERY_DB_REUSE_MAX; KEEPALIVE_MAX_AGE and KEEPALIVE_IDLE_TIMEOUT "
                "decide when a worker's connection closes.",
                id="keepalive_mw.W010",
            ))
    if conf.enabled(conf.CHANNELS) and channels.available() and not channels.wrappable():
        found.append(checks.Warning(
            "channels.db.DatabaseSyncToAsync has no thread_handler: keepalive_mw cannot make "
            "each database_sync_to_async call a unit of work, so a call's open transaction is "
            "rolled back instead of committed.",
            hint="Report your Channels version to keepalive_mw, or wrap the functions in "
            "keepalive_mw.scope().",
            id="keepalive_mw.W011",
        ))
    if conf.enabled(conf.DJANGO_TASKS) and django_tasks.available():
        for alias in django_tasks.manual_commit_result_aliases():
            found.append(checks.Warning(
                f"Task results are stored on database alias {alias!r}, whose AUTOCOMMIT is "
                "False: a failed task's result is written in the task's own transaction, "
                "which is rolled back with it.",
                hint="Store task results on an alias with autocommit on (a database router "
                "for the task result model).",
                id="keepalive_mw.W012",
            ))
    return found
