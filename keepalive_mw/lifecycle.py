"""A connection's life: checked out on first use, given back or closed when its use ends.

``connections.create_connection`` is the one door: Django calls it the first time a thread
(or greenlet, or async context) touches an alias, so a request that never touches an alias
costs nothing for it. keepalive_mw hands out a kept wrapper from the alias's pool there,
and takes it back when the unit of work that took it ends (see ``units``).
"""

from __future__ import annotations

import _thread
import logging
import types
from typing import TYPE_CHECKING, Any, Callable

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from . import attribution, borrow, conf, health, housekeeper, hygiene, outage, units
from .pool import (
    CLOSE_BROKEN,
    CLOSE_ERRORS,
    CLOSE_IDLE,
    AliasPool,
    KeptConnection,
    all_pools,
    kept_of,
    pool_for,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("keepalive_mw")

def _not_installed(alias: str) -> BaseDatabaseWrapper:
    raise RuntimeError("keepalive_mw is not installed: add it to INSTALLED_APPS")


# Django's own ConnectionHandler.create_connection, bound to the connections object; set
# when the app is ready.
_django_create_connection: Callable[[str], BaseDatabaseWrapper] = _not_installed


# -- checkout ------------------------------------------------------------------------------


def create_connection(alias: str) -> BaseDatabaseWrapper:
    """Replace ConnectionHandler.create_connection: hand out a kept wrapper if one is fit.

    With ``RELEASE = "transaction"`` the thread gets a front instead, which borrows a kept
    wrapper's session for each transaction (see ``borrow``).
    """
    try:
        config = conf.config_for(alias)
    except ImproperlyConfigured:
        # Let `manage.py check` (whose model checks create wrappers) report the problem;
        # requests fail loudly on it in on_request_started.
        config = None
    if config is None:
        return _django_create_connection(alias)
    pool = pool_for(alias)
    if config.transaction_release:
        return borrow.take_front(alias, pool)
    wrapper = take_kept(pool, config)
    if wrapper is not None:
        units.track(wrapper)
        return wrapper
    try:
        wrapper = _django_create_connection(alias)
    except BaseException:
        pool.forget()
        raise
    if wrapper.vendor == "sqlite" and wrapper.is_in_memory_db():
        pool.forget()  # in-memory databases die with their connection: Django keeps them
        return wrapper
    _keep(wrapper, pool)
    _name(wrapper, config)
    units.track(wrapper)
    return wrapper


def take_kept(pool: AliasPool, config: conf.AliasConfig) -> BaseDatabaseWrapper | None:
    """Take an idle kept wrapper fit for reuse, or reserve a slot and return None.

    Unfit ones met on the way are closed. At the bound, waits (``take``).
    """
    stats = pool.stats
    while True:
        wrapper = pool.take(config.max_connections, config.wait_timeout)
        if wrapper is None:
            return None
        kept: KeptConnection = wrapper._keepalive
        wrapper._thread_ident = _thread.get_ident()
        reason = hygiene.fit_for_reuse(wrapper, kept, config, stats)
        if reason is None:
            stats["connections_reused"] += 1
            return wrapper
        _close(wrapper, pool, reason)


def new_kept(alias: str, pool: AliasPool) -> BaseDatabaseWrapper:
    """A new kept wrapper, not connected yet, in a slot ``take_kept`` reserved."""
    try:
        wrapper = _django_create_connection(alias)
    except BaseException:
        pool.forget()
        raise
    _keep(wrapper, pool)
    _name(wrapper, conf.config_for(alias))
    return wrapper


def _name(wrapper: BaseDatabaseWrapper, config: conf.AliasConfig | None) -> None:
    """Name the wrapper's sessions after this process, or after the app alone through a
    transaction pooler (see ``attribution``)."""
    per_process = config is None or config.pooler != conf.POOLER_TRANSACTION
    attribution.install(wrapper, per_process=per_process)


def _keep(wrapper: BaseDatabaseWrapper, pool: AliasPool) -> KeptConnection:
    """Make ``wrapper`` a kept one of ``pool`` (its slot already reserved)."""
    kept = pool.track(wrapper)
    # Django's close_old_connections() calls this on each of the thread's wrappers.
    wrapper.close_if_unusable_or_obsolete = types.MethodType(  # type: ignore[method-assign]
        units.close_if_unusable_or_obsolete, wrapper)
    # Its connects ride out a server that is unavailable for a moment.
    wrapper.get_new_connection = types.MethodType(  # type: ignore[method-assign]
        outage.get_new_connection, wrapper)
    return kept


def adopt_existing() -> None:
    """Take charge of wrappers this thread created before keepalive_mw was installed.

    Django creates the default wrapper while it imports models (``connection.ops``); left
    alone, a server that runs requests on that same thread would use it unmanaged.
    """
    storage = connections._connections
    for alias in connections:
        wrapper = getattr(storage, alias, None)
        if wrapper is None or kept_of(wrapper) is not None or conf.config_for(alias) is None:
            continue
        if wrapper.connection is None:
            delattr(storage, alias)  # the next use goes through create_connection
            continue
        pool = pool_for(alias)
        pool.reserve()
        _keep(wrapper, pool).opened(health.socket_fd(wrapper.connection))
        wrapper.close_at = None
        wrapper.health_check_enabled = False
        units.track(wrapper)


def on_connection_created(sender: Any, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    """Record a new server connection of a kept wrapper; take over Django's age and checks."""
    kept = kept_of(connection)
    if kept is None:
        if connection.alias == "__no_db__":
            # Django creates or drops a (test) database: kept sessions would block that.
            close_idle()
        return
    kept.opened(health.socket_fd(connection.connection))
    # keepalive_mw decides when to check and close; Django's close_old_connections, if
    # something reconnects or calls it, finds nothing to do on a kept connection.
    connection.close_at = None
    connection.health_check_enabled = False
    pool_for(connection.alias).stats["connections_opened"] += 1
    logger.info("opened a connection of database alias %r", connection.alias)


# -- release -------------------------------------------------------------------------------


def release(wrappers: list[BaseDatabaseWrapper], failed: bool) -> None:
    """Clean each wrapper a request (or scope) took and give it back, or close it."""
    storage = connections._connections
    for wrapper in wrappers:
        alias = wrapper.alias
        if getattr(storage, alias, None) is wrapper:
            delattr(storage, alias)
        pool = pool_for(alias)
        config = conf.config_for(alias)
        if wrapper.__dict__.get("_ka_front"):
            borrow.end_of_unit(wrapper, pool, config, failed)
            continue
        if wrapper.connection is None:
            pool.discard(wrapper)
            continue
        if config is None:  # the alias was opted out meanwhile (override_settings)
            _close(wrapper, pool, CLOSE_IDLE)
            continue
        try:
            reason = hygiene.end_of_use(wrapper, wrapper._keepalive, config, failed, pool.stats)
        except Exception:
            logger.exception("cleaning a connection of alias %r failed: closing it", alias)
            reason = CLOSE_ERRORS
        if reason is None:
            pool.give_back(wrapper)
            if not housekeeper.running:
                housekeeper.start()
        else:
            _close(wrapper, pool, reason)


def _close(wrapper: BaseDatabaseWrapper, pool: AliasPool, reason: str) -> None:
    """Close a kept wrapper for ``reason`` and free its slot; never raises."""
    wrapper._thread_ident = _thread.get_ident()
    wrapper.in_atomic_block = False
    try:
        wrapper.close()
    except Exception:
        wrapper.connection = None
    pool.stats["connections_closed_" + reason] += 1
    log = logger.warning if reason == CLOSE_BROKEN else logger.info
    log("closed a connection of database alias %r: %s", wrapper.alias, reason)
    pool.discard(wrapper)


def close_idle(alias: str | None = None) -> int:
    """Close the idle kept connections of ``alias`` (all aliases by default) in this process.

    Return how many were closed. Connections in use by requests are not touched.
    """
    closed = 0
    for pool in all_pools():
        if alias is None or pool.alias == alias:
            borrow.drop_fronts(pool)
            for wrapper in pool.take_all_idle():
                _close(wrapper, pool, CLOSE_IDLE)
                closed += 1
    return closed


def keep_inherited(wrapper: BaseDatabaseWrapper) -> None:
    """In a forked child, after after_fork(): keep a wrapper the forking thread held.

    Its session was the parent's and has been let go of (see forking); the object stays,
    with whatever code stored on it, as a kept wrapper of the child's pool. Its next use
    opens the child's own connection, and the next request on this thread adopts it.
    A front (release mode "transaction") needs no slot: it has no session of its own.
    """
    pool = pool_for(wrapper.alias)
    if not borrow.is_front(wrapper):
        pool.reserve()
        _keep(wrapper, pool)
    units.thread_record.unscoped.append(wrapper)
    pool.held_outside(wrapper, None)


def after_fork() -> None:
    """In a forked child: the forking thread's record refers to the parent's connections."""
    units.after_fork()
