"""A connection's life: checked out on first use, given back or closed when its use ends.

``connections.create_connection`` is the one door: Django calls it the first time a thread
(or greenlet, or async context) touches an alias, so a request that never touches an alias
costs nothing for it. keepalive_mw hands out a kept wrapper from the alias's pool there,
and takes it back when the unit of work that took it ends: a request, a ``scope``, or a
unit an integration opens (a task, a consumer's database call).

Outside any unit a thread keeps what it takes, as in plain Django, until a unit adopts it
or Django's own ``close_old_connections()`` marks the end of the thread's unit of work.
"""

from __future__ import annotations

import _thread
import asyncio
import logging
import sys
import threading
import traceback
import types
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
    """What this thread (greenlet) has taken, in which units, and how its request went.

    A plain thread-local, not Django's asgiref Local: request_started, request_finished and
    the middleware's report all run on the request's own thread (under ASGI, its
    thread-sensitive executor thread), and a thread-local costs a fraction of a Local.
    """

    def __init__(self) -> None:
        # Open units of work (requests, scopes, integrations' units), innermost last, each
        # the list of wrappers it took or adopted.
        self.scopes: list[list[BaseDatabaseWrapper]] = []
        # Wrappers taken outside any unit (startup code, commands, worker loops, tests): the
        # next unit on this thread adopts them, so that they are given back at its end.
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
    _keep(wrapper, pool)
    attribution.install(wrapper)
    _track(wrapper)
    return wrapper


def _keep(wrapper: BaseDatabaseWrapper, pool: AliasPool) -> KeptConnection:
    """Make ``wrapper`` a kept one of ``pool`` (its slot already reserved)."""
    kept = pool.track(wrapper)
    # Django's close_old_connections() calls this on each of the thread's wrappers.
    wrapper.close_if_unusable_or_obsolete = types.MethodType(  # type: ignore[method-assign]
        _close_if_unusable_or_obsolete, wrapper)
    return kept


def _track(wrapper: BaseDatabaseWrapper) -> None:
    scopes = _record.scopes
    if scopes:
        scopes[-1].append(wrapper)
    elif not _in_event_loop():
        # Outside any unit the wrapper stays with its thread, as in plain Django (a
        # management command, startup code, a worker's loop), until a unit adopts it or
        # close_old_connections() ends the thread's use of it.
        _record.unscoped.append(wrapper)
        config = conf.config_for(wrapper.alias)
        taken_at = None
        if config is not None and config.leak_threshold is not None:
            taken_at = _stack(sys._getframe(2))
            if not housekeeper.running:
                housekeeper.start()
        pool_for(wrapper.alias).held_outside(wrapper, taken_at)
    # In an event loop Django keeps a wrapper per async context and it cannot query:
    # nothing to adopt, and the finalizer frees its slot when the context goes.


# Frames kept of where a connection was taken outside units, innermost first.
_STACK_LIMIT = 40


def _stack(frame: types.FrameType | None) -> list[tuple[str, int, str, None]]:
    """Where the code is: file, line and function of each frame, innermost last.

    Plain tuples, for traceback.StackSummary.from_list if it is ever shown: a fifth of
    the cost of traceback.extract_stack(), which reads every line.
    """
    frames = []
    while frame is not None and len(frames) < _STACK_LIMIT:
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_name, None))
        frame = frame.f_back
    frames.reverse()
    return frames


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
        _keep(wrapper, pool).opened(health.socket_fd(wrapper.connection))
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


# -- units of work -------------------------------------------------------------------


def _adopt_unscoped() -> list[BaseDatabaseWrapper]:
    """Return a new unit holding the wrappers this thread took outside any unit.

    Not one inside an atomic block, nor one whose methods someone replaced on the instance
    (Django's TestCase does both): it belongs to the code around the unit.
    """
    record = _record
    unit: list[BaseDatabaseWrapper] = []
    if record.unscoped:
        left = []
        for wrapper in record.unscoped:
            if _adoptable(wrapper):
                pool_for(wrapper.alias).held_in_unit(wrapper._keepalive)
                unit.append(wrapper)
            else:
                left.append(wrapper)
        record.unscoped = left
    return unit


def _adoptable(wrapper: BaseDatabaseWrapper) -> bool:
    """May a unit of work on this thread take over a wrapper taken outside any unit?"""
    return not wrapper.in_atomic_block and not _PATCHED.intersection(wrapper.__dict__)


# Instance attributes that mean the code around a unit has made a wrapper its own.
_PATCHED = frozenset(("connect", "cursor", "ensure_connection"))


def _end_through(unit: list[BaseDatabaseWrapper], failed: bool) -> None:
    """End ``unit`` and the units opened inside it and never closed."""
    scopes = _record.scopes
    if any(open_unit is unit for open_unit in scopes):
        while scopes:
            inner = scopes.pop()
            if inner:
                release(inner, failed)
            if inner is unit:
                break


def begin_unit() -> list[BaseDatabaseWrapper] | None:
    """Open a unit of work on this thread, adopting what the thread holds outside units.

    Return the unit, for ``end_unit``; None when the thread is already inside a request
    or unit, which stays in charge (a task run inline by the code of a request).
    """
    record = _record
    if record.scopes:
        return None
    unit = _adopt_unscoped()
    record.scopes.append(unit)
    return unit


def end_unit(unit: list[BaseDatabaseWrapper] | None, failed: bool) -> None:
    """Give back or close what ``unit`` took: commit if it succeeded, roll back if not.

    Idempotent; nothing for None (the unit was not opened).
    """
    if unit is not None:
        _end_through(unit, failed)


class _KeyedUnits(threading.local):
    """Units opened by a framework's start hook, found again by the key its end hook repeats.

    Per thread: a framework runs both hooks of a unit on the thread that runs it.
    """

    def __init__(self) -> None:
        # key (a task or message id) -> the unit begin_unit() opened, or None when the
        # work ran inside a request or another unit, which stays in charge.
        self.open: dict[Any, list[BaseDatabaseWrapper] | None] = {}


_keyed = _KeyedUnits()


def unit_started(key: Any) -> None:
    """A framework's unit of work ``key`` (a task or message id) starts on this thread.

    Connections it uses come from the pool, or are adopted if the thread already holds
    them. Inside a request or another unit it is part of that one.
    """
    _keyed.open[key] = begin_unit()


def unit_finished(key: Any, failed: bool = False) -> None:
    """The unit ``key`` ends: commit if it succeeded, roll back if it failed; give back.

    Nothing happens for a key that is not open (already finished, or never started).
    """
    keyed = _keyed.open
    if key in keyed:
        end_unit(keyed.pop(key), failed)


def units_abandoned() -> None:
    """End, as failures, the units of this thread whose end hook never came."""
    keyed = _keyed.open
    while keyed:
        _, unit = keyed.popitem()
        end_unit(unit, failed=True)


def _close_if_unusable_or_obsolete(wrapper: BaseDatabaseWrapper) -> None:
    """Django's close_old_connections() on a kept wrapper: the end of a unit of work.

    Outside any request or unit, the thread's use of the wrapper ends as closing it would
    end it in plain Django: an open transaction is rolled back, and the connection goes
    back to the pool clean, to be checked before its next use. Inside a request or unit
    nothing happens: the unit's end decides. A wrapper the surrounding code owns (inside
    an atomic block, or with methods patched on the instance) gets Django's own rules.
    """
    index = _unscoped_index(wrapper)
    if index is None:
        return
    if not _adoptable(wrapper):
        type(wrapper).close_if_unusable_or_obsolete(wrapper)
        return
    del _record.unscoped[index]
    pool_for(wrapper.alias).held_in_unit(wrapper._keepalive)
    # No local refers to the thread's unscoped list here: a logged error's traceback keeps
    # this frame, and must not keep what the thread takes later alive after it dies.
    release([wrapper], failed=True)


def _unscoped_index(wrapper: BaseDatabaseWrapper) -> int | None:
    for index, held in enumerate(_record.unscoped):
        if held is wrapper:
            return index
    return None


def release_thread() -> None:
    """End every unit open on this thread (as failures) and give back what it holds.

    For a worker process that is shutting down.
    """
    units_abandoned()
    record = _record
    record.request = None
    record.outcome = None
    while record.scopes:
        release(record.scopes.pop(), failed=True)
    held, record.unscoped = record.unscoped, []
    for wrapper in held:
        pool_for(wrapper.alias).held_in_unit(wrapper._keepalive)
        if _adoptable(wrapper):
            release([wrapper], failed=True)


# -- requests --------------------------------------------------------------------------------


def on_request_started(sender: Any, **kwargs: Any) -> None:
    """Open the request's unit; apply Django's own rules to aliases left to Django.

    Raises ImproperlyConfigured, failing the request, while a KEEPALIVE_* setting is invalid.
    """
    record = _record
    if record.request is not None:
        # The previous request on this thread never sent request_finished (a WSGI server
        # that does not call close()): end its use now, as a failure.
        _end_request(record, failed=True)
    record.outcome = None
    unit = _adopt_unscoped()
    record.request = unit
    record.scopes.append(unit)
    _django_rules()


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
    unit = record.request
    record.request = None
    record.outcome = None
    if unit is not None:
        _end_through(unit, failed)


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
    task or command: the block is a unit of work. Connections it uses are taken from the
    pool, or adopted if the thread already held them, and given back clean when the block
    ends, the transaction committed if the block succeeded and rolled back if it raised
    (or always rolled back with ``KEEPALIVE_END_OF_REQUEST="rollback"``).
    """

    def __enter__(self) -> scope:
        _record.scopes.append(_adopt_unscoped())
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
    _keep(wrapper, pool)
    _record.unscoped.append(wrapper)
    pool.held_outside(wrapper, None)


def after_fork() -> None:
    """In a forked child: the forking thread's record refers to the parent's connections."""
    for wrapper in _record.unscoped:
        kept = kept_of(wrapper)
        if kept is not None:
            kept.unscoped_since = None
    _record.scopes = []
    _record.unscoped = []
    _keyed.open = {}
    _record.request = None
    _record.outcome = None
