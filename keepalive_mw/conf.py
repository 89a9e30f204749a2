"""Settings: the one place keepalive_mw reads Django settings.

Global settings are named ``KEEPALIVE_<NAME>``; an alias may override any of them in
``DATABASES[alias]["KEEPALIVE"] = {"<NAME>": value, ...}`` or opt out with
``DATABASES[alias]["KEEPALIVE"] = False``. Resolved per-alias configurations are cached
and dropped whenever ``KEEPALIVE_*`` or ``DATABASES`` change (``override_settings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import connections

from . import pgbouncer

COMMIT_ON_SUCCESS = "commit_on_success"
ROLLBACK = "rollback"
END_OF_REQUEST_POLICIES = (COMMIT_ON_SUCCESS, ROLLBACK)

# Pool modes of a connection pooler in front of the database (PgBouncer's pool_mode names,
# which PgCat, Odyssey and Supavisor use too). None: keepalive_mw talks to the database.
POOLER_TRANSACTION = "transaction"
POOLER_SESSION = "session"
POOL_MODES = (POOLER_TRANSACTION, POOLER_SESSION)
# When a unit of work gives its server session back (KEEPALIVE_RELEASE): at its end, or
# whenever it is idle between transactions (see borrow.py).
REQUEST = "request"
TRANSACTION = "transaction"
RELEASE_MODES = (REQUEST, TRANSACTION)
# Backends (DatabaseWrapper.vendor) whose driver says, without a round trip, whether a
# transaction is open: what "idle between transactions" needs to be exact.
TRANSACTION_RELEASE_VENDORS = ("postgresql", "sqlite")

MIDDLEWARE_PATH = "keepalive_mw.middleware.KeepAliveMiddleware"
SETTING_PREFIX = "KEEPALIVE_"
ALIAS_KEY = "KEEPALIVE"

# Fraction of KEEPALIVE_MAX_AGE cut at random from each connection's lifetime, so that
# connections opened together are not all closed (and reopened) together.
MAX_AGE_JITTER = 0.025


def _number_or_none(value: Any, *, positive: bool = False) -> str | None:
    if value is None:
        return None
    return _number(value, positive=positive)


def _number(value: Any, *, positive: bool = False) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "must be a number of seconds"
    if value < 0 or (positive and value == 0):
        return "must be greater than 0" if positive else "must not be negative"
    return None


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be True or False"


def _policy(value: Any) -> str | None:
    if value in END_OF_REQUEST_POLICIES:
        return None
    return "must be one of %s" % ", ".join(repr(p) for p in END_OF_REQUEST_POLICIES)


def _pool_mode(value: Any) -> str | None:
    if value is None or value in POOL_MODES:
        return None
    return "must be None, %s (the pooler's pool_mode)" % " or ".join(repr(m) for m in POOL_MODES)
def _release_mode(value: Any) -> str | None:
    if value in RELEASE_MODES:
        return None
    return "must be one of %s" % ", ".join(repr(m) for m in RELEASE_MODES)


def _count_or_none(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be None or a whole number of at least 1"
    return None


@dataclass(frozen=True)
class Option:
    """One setting: its name without prefix, default, validator and check id."""

    name: str
    default: Any
    validate: Callable[[Any], str | None]
    check_id: str
    meaning: str
    # How reports show the value (None: as it is): a secret is never printed.
    shown: Callable[[Any], Any] | None = None

    @property
    def setting(self) -> str:
        return SETTING_PREFIX + self.name


OPTIONS: tuple[Option, ...] = (
    Option("MAX_AGE", 600, _number_or_none, "E001",
           "seconds a connection lives; None: no limit; 0: close after every request"),
    Option("HEALTH_CHECKS", True, _bool, "E002",
           "check a kept connection before reuse (no round trip unless needed)"),
    Option("PING_AFTER", 30.0, _number_or_none, "E003",
           "seconds idle after which reuse is preceded by a round-trip ping; None: never"),
    Option("PING_TIMEOUT", 5.0, lambda v: _number(v, positive=True), "E004",
           "seconds a ping may take before the connection is given up"),
    Option("IDLE_TIMEOUT", 300.0, lambda v: _number_or_none(v, positive=True), "E005",
           "seconds an unused kept connection stays open; None: no limit"),
    Option("END_OF_REQUEST", COMMIT_ON_SUCCESS, _policy, "E006",
           "what happens to a transaction still open when a request or unit of work ends"),
    Option("RESET_SESSION", False, _bool, "E007",
           "reset session state (SET, temp tables, advisory locks) before reuse"),
    Option("RELEASE", REQUEST, _release_mode, "E024",
           "when a request, scope or task gives its server session back: 'request' (at its "
           "end) or 'transaction' (whenever it is idle between transactions)"),
    Option("MAX_CONNECTIONS", None, _count_or_none, "E008",
           "bound on connections per process and alias; None: unbounded"),
    Option("WAIT_TIMEOUT", 30.0, _number, "E009",
           "seconds a request waits at the bound before failing"),
    Option("CONNECT_RETRY", 10.0, _number, "E017",
           "seconds a new connection is retried while the server is unavailable "
           "(down, restarting, full); 0: fail at once"),
    Option("LEAK_THRESHOLD", None, lambda v: _number_or_none(v, positive=True), "E013",
           "seconds a thread may hold a connection outside any request or unit of work "
           "before a warning says where it took it; None: never"),
    Option("POOLER", None, _pool_mode, "E018",
           "pool mode of the pooler (PgBouncer) the alias connects through: 'transaction' "
           "or 'session'; None: straight to the database"),
    Option("PGBOUNCER_ADMIN", None, pgbouncer.problem, "E019",
           "PgBouncer's admin console for keepalive_status (SHOW POOLS): a libpq connection "
           "string or dict; host, port, user and password default to the alias's; None: "
           "not read", shown=pgbouncer.redacted),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}

# Settings of the whole process, not of an alias.
PROMETHEUS = Option("PROMETHEUS", False, _bool, "E012",
                    "export the counters as Prometheus metrics (needs prometheus_client)")
# Integrations: each on by default, and in effect when its framework is installed.
CELERY = Option("CELERY", True, _bool, "E014",
                "make each Celery task a unit of work (commit on SUCCESS, else roll back)")
CHANNELS = Option("CHANNELS", True, _bool, "E015",
                  "make each Channels database_sync_to_async call a unit of work")
DJANGO_TASKS = Option("DJANGO_TASKS", True, _bool, "E016",
                      "make each task of Django's tasks framework a unit of work")
INTEGRATIONS = (CELERY, CHANNELS, DJANGO_TASKS)
GLOBAL_OPTIONS: tuple[Option, ...] = (PROMETHEUS, *INTEGRATIONS)


@dataclass(frozen=True)
class AliasConfig:
    """The keepalive settings in force for one alias."""

    alias: str
    max_age: float | None
    health_checks: bool
    ping_after: float | None
    ping_timeout: float
    idle_timeout: float | None
    end_of_request: str
    reset_session: bool
    max_connections: int | None
    wait_timeout: float
    connect_retry: float
    leak_threshold: float | None
    pooler: str | None
    pgbouncer_admin: str | dict[str, Any] | None
    release: str
    # RELEASE is "transaction" and the alias can have it: autocommit on, no session reset,
    # a backend whose driver reports open transactions. Otherwise the alias is released
    # per request (manage.py check says why: keepalive_mw.E025, E026, W016).
    transaction_release: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The settings by name, as reports show them (secrets hidden)."""
        values = {}
        for option in OPTIONS:
            value = getattr(self, option.name.lower())
            values[option.name] = option.shown(value) if option.shown else value
        return values


def global_value(option: Option) -> Any:
    return getattr(settings, option.setting, option.default)


def enabled(option: Option) -> bool:
    """Is an on/off process-wide setting (an integration) on? An invalid value is off."""
    return global_value(option) is True


def value_for(overrides: dict[str, Any], option: Option) -> Any:
    """The value of ``option`` for an alias: its override, else the global setting."""
    return overrides[option.name] if option.name in overrides else global_value(option)


def alias_setting(alias: str, name: str | None = None) -> str:
    """How a user writes an alias's keepalive entry: ``DATABASES["default"]["KEEPALIVE"]``.

    With ``name``, the override of one setting in it (``...["KEEPALIVE"]["MAX_AGE"]``).
    """
    where = f'DATABASES["{alias}"]["{ALIAS_KEY}"]'
    return where if name is None else f'{where}["{name}"]'


def alias_overrides(alias: str) -> Any:
    """Return ``DATABASES[alias]["KEEPALIVE"]``: True (default), False or a dict."""
    return settings.DATABASES.get(alias, {}).get(ALIAS_KEY, True)


def uses_native_pool(alias: str) -> bool:
    return bool(settings.DATABASES.get(alias, {}).get("OPTIONS", {}).get("pool"))


def resolve(alias: str) -> AliasConfig | None:
    """Build the configuration of ``alias``; None when keepalive_mw leaves it alone."""
    overrides = alias_overrides(alias)
    if overrides is False or uses_native_pool(alias):
        return None
    if overrides is True:
        overrides = {}
    if not isinstance(overrides, dict):
        raise ImproperlyConfigured(f"{alias_setting(alias)} must be True, False or a dict.")
    values = {}
    for option in OPTIONS:
        value = value_for(overrides, option)
        problem = option.validate(value)
        if problem:
            # Name the setting as the user wrote it: the alias's override, or the global.
            if option.name in overrides:
                raise ImproperlyConfigured(f"{alias_setting(alias, option.name)} {problem}.")
            raise ImproperlyConfigured(f"{option.setting} {problem} (alias {alias!r}).")
        values[option.name.lower()] = value
    config = AliasConfig(alias=alias, **values)
    if config.release == TRANSACTION and not transaction_release_blockers(alias, config):
        config = replace(config, transaction_release=True)
    return config


def vendor_of(alias: str) -> str | None:
    """The ``vendor`` of an alias's backend (None when its ENGINE cannot be loaded)."""
    from django.db.utils import load_backend

    engine = settings.DATABASES.get(alias, {}).get("ENGINE") or "django.db.backends.dummy"
    try:
        return load_backend(engine).DatabaseWrapper.vendor
    except Exception:
        return None


def transaction_release_blockers(alias: str, config: AliasConfig) -> list[str]:
    """Why ``alias`` cannot give its session back between transactions (empty: it can)."""
    blockers = []
    vendor = vendor_of(alias)
    if vendor not in TRANSACTION_RELEASE_VENDORS:
        blockers.append("vendor")
    if not settings.DATABASES.get(alias, {}).get("AUTOCOMMIT", True):
        blockers.append("autocommit")
    if config.reset_session:
        blockers.append("reset_session")
    return blockers


# Resolved configurations by alias (None = unmanaged); a miss means "not resolved yet".
_configs: dict[str, AliasConfig | None] = {}
# Aliases keepalive_mw leaves to Django's own end-of-request handling; None = unknown.
_unmanaged: tuple[str, ...] | None = None


def config_for(alias: str) -> AliasConfig | None:
    """Return the cached configuration of ``alias`` (None when unmanaged)."""
    try:
        return _configs[alias]
    except KeyError:
        config = _configs[alias] = resolve(alias)
        return config


def unmanaged_aliases() -> tuple[str, ...]:
    """Return the configured aliases keepalive_mw leaves to Django."""
    global _unmanaged
    if _unmanaged is None:
        _unmanaged = tuple(alias for alias in connections if config_for(alias) is None)
    return _unmanaged


def managed_aliases() -> list[str]:
    return [alias for alias in connections if config_for(alias) is not None]


def clear_cache(**kwargs: Any) -> None:
    global _unmanaged
    _configs.clear()
    _unmanaged = None


def _on_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting.startswith(SETTING_PREFIX) or setting == "DATABASES":
        clear_cache()


setting_changed.connect(_on_setting_changed, dispatch_uid="keepalive_mw.conf")

__all__ = [
    "AliasConfig",
    "COMMIT_ON_SUCCESS",
    "OPTIONS",
    "REQUEST",
    "ROLLBACK",
    "TRANSACTION",
    "config_for",
    "managed_aliases",
    "unmanaged_aliases",
]
