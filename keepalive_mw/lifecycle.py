"""A connection's life: checked out on first use, given back or closed when its use ends.

``connections.create_connection`` is the one door: Django calls it the first time a thread
(or greenlet, or async context) touches an alias, so a request that never touches an alias
costs nothing for it. keepalive_mw hands out a kept wrapper from the alias's pool there,
and takes it back when the request (or a ``scope``) that took it ends.
"""

from __future__ import annotations

import _thread
import asyncio
import logging
import threading
from contextlib import ContextDecorator
from typing import TYPE_CHECKING, Any, Callable

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from . import attribution, conf, health, housekeeper, hygiene
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

# How the request ended, as the middleware saw it; None when it did not see it.
SUCCEEDED = "succeeded"
FAILED = "failed"


class _ThreadRecord(threading.local):
    """What this thread (greenlet) has taken, and how its request went.

    A plain thread-local, not Django's asgiref Local: request_started, request_finished and
    the middleware's report all run on the request's own thread (under ASGI, its
    thread-sensitive executor thread), and a thread-local costs a fraction of a Local.
    """

    def __init__(self) -> None:
        # Open scopes, innermost last, each the list of wrappers it took.
        self.scopes: list[list[BaseDatabaseWrapper]] = []
        # Wrappers taken outside any scope (startup code, commands, tests): the next request
        # on this thread adopts them, so that they are given back at its end.
        self.unscoped: list[BaseDatabaseWrapper] = []
        # The scope of the request in progress on this thread, or None.
        self.request: list[BaseDatabaseWrapper] | None = None
        # SUCCEEDED or FAILED as the middleware saw the request; None if it did not.
        self.outcome: str | None = None


_record = _ThreadRecord()

def _not_installed(alias: str) -> BaseDatabaseWrapper:
    raise RuntimeError("keepalive_mw is not installed: add it to INSTALLED_APPS")


# Django's own ConnectionHandler.create_connection, bound to the connections object; set
# when the app is ready.
_django_create_connection: Callable[[str], BaseDatabaseWrapper] = _not_installed


# -- checkout ------------------------------------------------------------------------------


def create_connection(alias: str) -> BaseDatabaseWrapper:
    """Replace ConnectionHandler.create_connection: hand out a kept wrapper if one is fit."""
    try:
        config = conf.config_for(alias)
    except ImproperlyConfigured:
        # Let `manage.py check` (whose model checks create wrappers) report the problem;
        # requests fail loudly on it in on_request_started.
        config = None
    if config is None:
        return _django_create_connection(alias)
    pool = pool_for(alias)
    stats = pool.stats
    while True:
        wrapper = pool.take(config.max_connections, config.wait_timeout)
        if wrapper is None:
            break
        kept: KeptConnection = wrapper._keepalive
        wrapper._thread_ident = _thread.get_ident()
        reason = hygiene.fit_for_reuse(wrapper, kept, config, stats)
        if reason is None:
            stats["connections_reused"] += 1
            _track(wrapper)
            return wrapper
        _close(wrapper, pool, reason)
    try:
        wrapper = _django_create_connection(alias)
    except BaseException:
        pool.forget()
        raise
    if wrapper.vendor == "sqlite" and wrapper.is_in_memory_db():
        pool.forget()  # in-memory databases die with their connection: Django keeps them
        return wrapper
    pool.track(wrapper)
    attribution.install(wrapper)
    _track(wrapper)
    return wrapper


def _track(wrapper: BaseDatabaseWrapper) -> None:
    scopes = _record.scopes
    if scopes:
        scopes[-1].append(wrapper)
    elif not _in_event_loop():
        # Outside any request or scope the wrapper stays with its thread, as in plain
        # Django (a management command, startup code), until a request adopts it.
        _record.unscoped.append(wrapper)
    # In an event loop Django keeps a wrapper per async context and it cannot query:
    # nothing to adopt, and the finalizer frees its slot when the context goes.


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


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
        pool.track(wrapper).opened(health.socket_fd(wrapper.connection))
        wrapper.close_at = None
        wrapper.health_check_enabled = False
        _track(wrapper)


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
            for wrapper in pool.take_all_idle():
                _close(wrapper, pool, CLOSE_IDLE)
                closed += 1
    return closed


# -- requests --------------------------------------------------------------------------------


def on_request_started(sender: Any, **kwargs: Any) -> None:
    """Open the request's scope; apply Django's own rules to aliases left to Django.

    Raises ImproperlyConfigured, failing the request, while a KEEPALIVE_* setting is invalid.
    """
    record = _record
    if record.request is not None:
        # The previous request on this thread never sent request_finished (a WSGI server
        # that does not call close()): end its use now, as a failure.
        _end_request(record, failed=True)
    record.outcome = None
    scope: list[BaseDatabaseWrapper] = []
    if record.unscoped:
        scope[:] = [wrapper for wrapper in record.unscoped if _adoptable(wrapper)]
        record.unscoped = [wrapper for wrapper in record.unscoped if not _adoptable(wrapper)]
    record.request = scope
    record.scopes.append(scope)
    _django_rules()


def _adoptable(wrapper: BaseDatabaseWrapper) -> bool:
    """May a request on this thread take over a wrapper it finds taken outside any scope?

    Not one inside an atomic block, nor one whose methods someone replaced on the instance
    (Django's TestCase does both): it belongs to the code around the request.
    """
    return not wrapper.in_atomic_block and not _PATCHED.intersection(wrapper.__dict__)


# Instance attributes that mean the code around a request has made a wrapper its own.
_PATCHED = frozenset(("connect", "cursor", "ensure_connection"))


def on_request_finished(sender: Any, **kwargs: Any) -> None:
    """Give back or close every kept connection the request took."""
    record = _record
    if record.request is not None:
        # Without the middleware nobody says how the request ended (outcome None): roll
        # back, since a commit cannot be taken back.
        _end_request(record, failed=record.outcome is not SUCCEEDED)
    _django_rules()


def abort_request() -> None:
    """End the current request's use of connections now, as a failure; idempotent.

    For a streaming body that raised: Django's ASGIHandler then never calls
    response.close(), so request_finished never comes. Under WSGI close() still follows
    and finds nothing left to do.
    """
    if _record.request is not None:
        _end_request(_record, failed=True)


def _end_request(record: _ThreadRecord, failed: bool) -> None:
    request_scope = record.request
    record.request = None
    record.outcome = None
    scopes = record.scopes
    if any(open_scope is request_scope for open_scope in scopes):
        # Scopes opened inside the request and never closed end with it.
        while scopes:
            inner = scopes.pop()
            if inner:
                release(inner, failed)
            if inner is request_scope:
                break


def _django_rules() -> None:
    """Do what Django's close_old_connections does, for aliases keepalive_mw leaves alone."""
    aliases = conf.unmanaged_aliases()
    if aliases:
        storage = connections._connections
        for alias in aliases:
            wrapper = getattr(storage, alias, None)
            if wrapper is not None:
                wrapper.close_if_unusable_or_obsolete()


def set_outcome(outcome: str) -> None:
    _record.outcome = outcome


# -- outside requests ----------------------------------------------------------------------


class scope(ContextDecorator):
    """Give code outside requests the same reuse and hygiene as a request.

    ``with keepalive_mw.scope():`` (or ``@keepalive_mw.scope()``) in a background thread,
    task or command: connections first used inside are taken from the pool, and given back
    clean when the block ends, the transaction committed if the block succeeded and rolled
    back if it raised (or always rolled back with ``KEEPALIVE_END_OF_REQUEST="rollback"``).
    """

    def __enter__(self) -> scope:
        _record.scopes.append([])
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        scopes = _record.scopes
        if scopes:
            release(scopes.pop(), failed=exc_type is not None)


def keep_inherited(wrapper: BaseDatabaseWrapper) -> None:
    """In a forked child, after after_fork(): keep a wrapper the forking thread held.

    Its session was the parent's and has been let go of (see forking); the object stays,
    with whatever code stored on it, as a kept wrapper of the child's pool. Its next use
    opens the child's own connection, and the next request on this thread adopts it.
    """
    pool = pool_for(wrapper.alias)
    pool.reserve()
    pool.track(wrapper)
    _record.unscoped.append(wrapper)


def after_fork() -> None:
    """In a forked child: the forking thread's record refers to the parent's connections."""
    _record.scopes = []
    _record.unscoped = []
    _record.request = None
    _record.outcome = None
