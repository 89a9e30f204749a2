"""Release mode "transaction": a unit of work holds a server session only while it needs one.

With ``RELEASE = "transaction"`` what a thread gets for ``connections[alias]`` is a *front*:
a Django ``DatabaseWrapper`` that the thread keeps for its whole unit of work (request,
scope, task), as in plain Django, but that has no server session of its own. When the front
needs one (``ensure_connection()``: the first query of a transaction) it borrows the live
driver connection of a kept wrapper from the pool, a *carrier*, checked as in request mode
(``hygiene.fit_for_reuse``) or newly opened through the carrier's own ``connect()`` (so
``connection_created`` and the session's initialisation run once per server session). It
gives the carrier back as soon as the unit is idle between transactions:

- no cursor the front made is open (``iterator()`` keeps its server-side cursor, ``WITH
  HOLD`` outside transactions on PostgreSQL, until it is exhausted or closed);
- autocommit is on and no ``atomic`` block is open;
- the driver reports no open transaction (libpq's transaction status for psycopg 3 and
  psycopg2, ``in_transaction`` for sqlite3): a raw ``BEGIN`` keeps the session until its
  ``COMMIT``;
- nothing pins the session (``hold_session()``, Django's ``temporary_connection()``);
- the front belongs to a unit of work. Outside any unit (management commands, start-up
  code, worker loops) a thread keeps its session as in request mode, until
  ``close_old_connections()`` or a unit adopts the front.

This is checked when the last open cursor closes and when autocommit comes back on (the
end of an outermost ``atomic`` block, after its ``on_commit`` callbacks). Nothing is
checked from a garbage-collection callback: a cursor collected without ``close()`` only
stops counting, and the session goes back at the next release point or the unit's end.

Carriers are ordinary kept wrappers: the pool's bound, health checks, ages, idle timeout
and housekeeper apply to them unchanged, and only they count against ``MAX_CONNECTIONS``.
Fronts are recycled between units (without a session) so that what Django caches on a
wrapper (the server version, features) is computed once per front, not per request.

Why the driver connection moves and not the wrapper (handing the wrapper itself back to
the pool between transactions): code holds a wrapper across statements.
``transaction.mark_for_rollback_on_error`` reads ``in_atomic_block`` after the statement's
cursor closed, ``execute_wrapper()`` pops from the wrapper it pushed on, user code keeps
``conn = connections[alias]``; a wrapper given back mid-unit could be read or changed by
its old thread while another thread uses it. A front is never shared between threads, and
the driver connection only moves when nothing the front made refers to it.
"""

from __future__ import annotations

import _thread
import logging
import time
import types
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import DEFAULT_DB_ALIAS, connections

from . import conf, health, housekeeper, hygiene, lifecycle, units
from .pool import (
    CLOSE_AGE,
    CLOSE_BROKEN,
    CLOSE_ERRORS,
    CLOSE_IDLE,
    AliasPool,
    KeptConnection,
    all_pools,
    pool_for,
)

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("keepalive_mw")


# -- fronts --------------------------------------------------------------------------------


class Front:
    """Mixed into a backend's DatabaseWrapper class to make fronts of its instances.

    Inert on instances the class makes by itself (``copy()``, ``_nodb_cursor()``), which
    do not carry ``_ka_front``.
    """

    # Instance attributes of a front (class defaults: not a front).
    _ka_front = False
    # The kept wrapper whose driver connection the front is using, or None.
    _ka_carrier: BaseDatabaseWrapper | None = None
    # Cursors the front made on the current carrier and nobody closed yet.
    _ka_cursors = 0
    # Reasons to keep the session whatever else says (hold_session, temporary_connection).
    _ka_pins = 0
    # Counts carriers: a cursor made on an earlier one no longer counts.
    _ka_epoch = 0
    # Of the pins, those of disable_constraint_checking() (released by enable_...()).
    _ka_constraint_pins = 0

    def connect(self) -> None:
        if not self._ka_front:
            return super().connect()  # type: ignore[misc]
        _attach(self)

    def get_autocommit(self) -> bool:
        # Without a session a front is in autocommit, as its next connect() would set: no
        # need to borrow one to say so (transaction.on_commit() outside atomic asks).
        if self._ka_front and self.connection is None:  # type: ignore[attr-defined]
            return self.autocommit  # type: ignore[attr-defined,no-any-return]
        return super().get_autocommit()  # type: ignore[misc,no-any-return]

    def set_autocommit(self, autocommit: bool,
                       force_begin_transaction_with_broken_autocommit: bool = False) -> None:
        super().set_autocommit(  # type: ignore[misc]
            autocommit, force_begin_transaction_with_broken_autocommit)
        if autocommit and self._ka_carrier is not None:
            release_point(self)  # type: ignore[arg-type]

    def _close(self) -> None:
        carrier = self._ka_carrier
        if carrier is None:
            return super()._close()  # type: ignore[misc,no-any-return]
        # Closing a front ends the session it uses: the carrier goes with it. Django's
        # close() then forgets the driver connection, or keeps it until the atomic block
        # exits (closed_in_transaction), as for any wrapper.
        _detach(self, keep_connection=True)  # type: ignore[arg-type]
        pool = pool_for(carrier.alias)
        carrier._thread_ident = _thread.get_ident()
        carrier.in_atomic_block = False
        try:
            carrier.close()
        finally:
            carrier.connection = None
            pool.discard(carrier)

    def make_cursor(self, cursor: Any) -> Any:
        wrapped = super().make_cursor(cursor)  # type: ignore[misc]
        if self._ka_carrier is not None:
            _track(self, wrapped)  # type: ignore[arg-type]
        return wrapped

    def make_debug_cursor(self, cursor: Any) -> Any:
        wrapped = super().make_debug_cursor(cursor)  # type: ignore[misc]
        if self._ka_carrier is not None:
            _track(self, wrapped)  # type: ignore[arg-type]
        return wrapped

    def disable_constraint_checking(self) -> bool:
        # Session state (SQLite's PRAGMA foreign_keys, used by its schema editor and by
        # loaddata): the session is kept until enable_constraint_checking().
        if not self._ka_front:
            return super().disable_constraint_checking()  # type: ignore[misc,no-any-return]
        self._ka_pins += 1
        try:
            disabled = super().disable_constraint_checking()  # type: ignore[misc]
        except BaseException:
            self._ka_pins -= 1
            raise
        if disabled:
            self._ka_constraint_pins += 1
        else:
            self._ka_pins -= 1
            release_point(self)  # type: ignore[arg-type]
        return bool(disabled)

    def enable_constraint_checking(self) -> None:
        try:
            super().enable_constraint_checking()  # type: ignore[misc]
        finally:
            if self._ka_constraint_pins:
                self._ka_constraint_pins -= 1
                self._ka_pins -= 1
                release_point(self)  # type: ignore[arg-type]

    @contextmanager
    def temporary_connection(self) -> Iterator[Any]:
        """Django's, with the session kept until the block ends.

        Django reads ``self.connection`` after the block's cursor closed (``pg_version``
        reads ``connection.info``); and where Django would close a connection it opened
        for the block, the session goes back to the pool instead.
        """
        if not self._ka_front:
            with super().temporary_connection() as cursor:  # type: ignore[misc]
                yield cursor
            return
        borrowed = self.connection is None  # type: ignore[attr-defined]
        self._ka_pins += 1
        try:
            with self.cursor() as cursor:  # type: ignore[attr-defined]
                yield cursor
        finally:
            self._ka_pins -= 1
            if self._ka_carrier is not None:
                release_point(self, outside_units=borrowed)  # type: ignore[arg-type]


_front_classes: dict[type, type] = {}


def _front_class(cls: type) -> type:
    front_cls = _front_classes.get(cls)
    if front_cls is None:
        front_cls = type(cls.__name__, (Front, cls), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__, "_ka_state": staticmethod(_state_reader(cls))})
        front_cls = _front_classes.setdefault(cls, front_cls)
    return front_cls


# libpq's PQtransactionStatus: IDLE, ACTIVE, INTRANS, INERROR, UNKNOWN (bad connection).
_LIBPQ_STATES = (health.IDLE, health.IN_TRANSACTION, health.IN_TRANSACTION,
                 health.IN_TRANSACTION, health.BROKEN)


def _state_reader(cls: type) -> Any:
    """What the driver of ``cls``'s connections says about their transaction, no I/O.

    IDLE, IN_TRANSACTION or BROKEN (or an exception: broken); one attribute read on the
    hot path instead of health.transaction_state's probing.
    """
    if cls.vendor == "postgresql":
        if cls.Database.__name__ == "psycopg":
            return lambda raw: _LIBPQ_STATES[raw.pgconn.transaction_status]
        return lambda raw: _LIBPQ_STATES[raw.get_transaction_status()]  # psycopg2
    if cls.vendor == "sqlite":
        return lambda raw: health.IN_TRANSACTION if raw.in_transaction else health.IDLE
    return lambda raw: health.IN_TRANSACTION  # never released between transactions


def is_front(wrapper: BaseDatabaseWrapper) -> bool:
    return bool(wrapper.__dict__.get("_ka_front"))


def take_front(alias: str, pool: AliasPool) -> BaseDatabaseWrapper:
    """A front for this thread's first use of ``alias`` (``connections.create_connection``)."""
    front = pool.take_front()
    if front is None:
        front = lifecycle._django_create_connection(alias)
        if front.vendor == "sqlite" and front.is_in_memory_db():
            return front  # in-memory databases die with their connection: Django keeps them
        _make_front(front)
    front._thread_ident = _thread.get_ident()
    units.track(front)
    return front


def _make_front(wrapper: BaseDatabaseWrapper) -> None:
    wrapper.__class__ = _front_class(type(wrapper))
    wrapper._ka_front = True
    wrapper._ka_carrier = None
    wrapper._ka_cursors = 0
    wrapper._ka_pins = 0
    wrapper._ka_epoch = 0
    # The units' bookkeeping (held outside units, leak warnings) only: a front has no
    # session of its own and no slot in the pool.
    wrapper._keepalive = KeptConnection()
    # What connect() would have set; keepalive_mw decides about ages and checks.
    wrapper.autocommit = wrapper.settings_dict["AUTOCOMMIT"]
    wrapper.close_at = None
    wrapper.health_check_enabled = False
    # Django's close_old_connections() on a front: the end of a unit of work, as for a kept
    # wrapper (units.close_if_unusable_or_obsolete).
    wrapper.close_if_unusable_or_obsolete = types.MethodType(  # type: ignore[method-assign]
        units.close_if_unusable_or_obsolete, wrapper)


# -- borrowing a session -------------------------------------------------------------------

# Attributes a backend's connect() sets on the wrapper (get_connection_params(),
# get_new_connection()) beside Django's transaction state: PostgreSQL's isolation level,
# SQLite's transaction mode and init commands. A front borrowing a session gets them from
# the carrier that connected it (tests/test_borrow.py compares with a plain wrapper).
SESSION_ATTRIBUTES = ("isolation_level", "transaction_mode", "init_commands")


def _attach(front: BaseDatabaseWrapper) -> None:
    """The front's connect(): borrow a carrier's session, checked, or open a new one."""
    alias = front.alias
    try:
        config = conf.config_for(alias)
    except ImproperlyConfigured:
        config = None
    if config is None:
        # The alias was left to Django meanwhile (override_settings): from now on the front
        # is a plain wrapper with a connection of its own.
        front._ka_front = False
        return super(Front, front).connect()  # type: ignore[misc,no-any-return]
    # What Django's connect() resets (a connection closed inside an atomic block leaves
    # needs_rollback and closed_in_transaction set).
    front.in_atomic_block = False
    if front.savepoint_ids:
        front.savepoint_ids = []
    if front.atomic_blocks:
        front.atomic_blocks = []
    front.needs_rollback = False
    front.closed_in_transaction = False
    front.errors_occurred = False
    front.health_check_done = True
    pool = pool_for(alias)
    previous = front._ka_carrier
    if previous is not None:
        # connect() called on a front that has a session: Django would open another and
        # drop this one; end it rather than give back a session in an unknown state.
        _detach(front)
        lifecycle._close(previous, pool, CLOSE_IDLE)
    carrier = lifecycle.take_kept(pool, config)
    if carrier is None:
        carrier = lifecycle.new_kept(alias, pool)
        try:
            carrier.ensure_connection()
        except BaseException:
            carrier.connection = None
            pool.discard(carrier)
            raise
    front._ka_carrier = carrier
    front.connection = carrier.connection
    front.autocommit = carrier.autocommit
    # What the backend's connect() records on the wrapper besides Django's own state.
    carried = carrier.__dict__
    for name in SESSION_ATTRIBUTES:
        if name in carried:
            setattr(front, name, carried[name])
    front.run_on_commit = []


def release_point(front: BaseDatabaseWrapper, outside_units: bool = False) -> None:
    """Give the carrier back if the front is idle between transactions; never raises.

    ``outside_units``: also when the front is held outside any unit of work (the end of
    a ``temporary_connection()`` that borrowed the session for itself).
    """
    carrier = front._ka_carrier
    if (carrier is None or front._ka_cursors or front._ka_pins or front.in_atomic_block
            or not front.autocommit):
        return
    if not outside_units and front._keepalive.unscoped_since is not None:
        return  # held outside units: kept as in request mode
    try:
        state = front._ka_state(front.connection)
    except Exception:
        state = health.BROKEN
    if state == health.IN_TRANSACTION:
        return
    _park(front, carrier, broken=state == health.BROKEN)


def _park(front: BaseDatabaseWrapper, carrier: BaseDatabaseWrapper, broken: bool) -> None:
    """Give a carrier back to the pool between two transactions (or close it)."""
    _detach(front)
    pool = pool_for(carrier.alias)
    # Django's connect() would clear it on the next session: errors belong to this one.
    errors_occurred, front.errors_occurred = front.errors_occurred, False
    try:
        config = conf.config_for(carrier.alias)
    except ImproperlyConfigured:
        config = None
    kept: KeptConnection = carrier._keepalive
    now = time.monotonic()
    if broken:
        reason: str | None = CLOSE_BROKEN
    elif config is None:
        reason = CLOSE_IDLE
    else:
        reason = CLOSE_AGE if kept.expired(config.max_age, now) else None
    if reason is not None:
        lifecycle._close(carrier, pool, reason)
        return
    kept.suspect = errors_occurred
    kept.last_used_at = now
    pool.stats["connections_released"] += 1
    pool.give_back(carrier)
    if not housekeeper.running:
        housekeeper.start()


def _detach(front: BaseDatabaseWrapper, keep_connection: bool = False) -> None:
    if not keep_connection:
        front.connection = None
    front._ka_carrier = None
    front._ka_epoch += 1
    front._ka_cursors = 0


# -- cursors -------------------------------------------------------------------------------


class TrackedCursor:
    """Mixed into a cursor wrapper class: closing the last open cursor is a release point."""

    _ka_owner: Any = None
    _ka_epoch = -1

    def close(self) -> Any:
        front = self._ka_owner
        if front is None:
            return self.cursor.close()  # type: ignore[attr-defined]
        self._ka_owner = None
        try:
            return self.cursor.close()  # type: ignore[attr-defined]
        finally:
            if front._ka_epoch == self._ka_epoch:
                front._ka_cursors -= 1
                if not front._ka_cursors:
                    release_point(front)

    def __del__(self) -> None:
        # Never closed (a raw cursor dropped by user code): stop counting it, nothing more;
        # only on the front's own thread (a cyclic collection can run on any thread).
        front = self._ka_owner
        if (front is not None and front._ka_epoch == self._ka_epoch
                and front._thread_ident == _thread.get_ident()):
            self._ka_owner = None
            front._ka_cursors -= 1


_tracked_classes: dict[type, type] = {}


def _track(front: BaseDatabaseWrapper, wrapped: Any) -> None:
    cls = wrapped.__class__
    tracked = _tracked_classes.get(cls)
    if tracked is None:
        tracked = type(cls.__name__, (TrackedCursor, cls), {
            "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        tracked = _tracked_classes.setdefault(cls, tracked)
    wrapped.__class__ = tracked
    wrapped._ka_owner = front
    wrapped._ka_epoch = front._ka_epoch
    front._ka_cursors += 1


# -- the end of a unit -----------------------------------------------------------------------


def end_of_unit(front: BaseDatabaseWrapper, pool: AliasPool, config: conf.AliasConfig | None,
                failed: bool) -> None:
    """A unit of work that used ``front`` ended: clean and give back what it still holds.

    The carrier, if the unit held one at its end (an open transaction, an atomic block
    left open, a cursor never closed, a session held outside units), gets the end-of-use
    hygiene of request mode; the front goes back to the pool's fronts, clean.
    """
    carrier = front._ka_carrier
    if carrier is not None:
        front._ka_pins += 1  # hygiene's commit and set_autocommit are no release points
        try:
            if config is None:
                reason: str | None = CLOSE_IDLE
            else:
                try:
                    reason = hygiene.end_of_use(front, carrier._keepalive, config, failed,
                                                pool.stats)
                except Exception:
                    logger.exception("cleaning a connection of alias %r failed: closing it",
                                     front.alias)
                    reason = CLOSE_ERRORS
        finally:
            front._ka_pins -= 1
        _detach(front)
        if reason is None:
            pool.give_back(carrier)
            if not housekeeper.running:
                housekeeper.start()
        else:
            lifecycle._close(carrier, pool, reason)
    else:
        # Closed inside an atomic block the unit never left: the session went with it.
        _detach(front)
    _reset(front)
    if config is not None and config.transaction_release and front._ka_front:
        pool.give_back_front(front)


def _reset(front: BaseDatabaseWrapper) -> None:
    """Django's transaction state of a front between units: as a new connection's."""
    front.in_atomic_block = False
    front.atomic_blocks = []
    front.savepoint_ids = []
    front.savepoint_state = 0
    front.needs_rollback = False
    front.closed_in_transaction = False
    front.commit_on_exit = True
    front.errors_occurred = False
    front.run_on_commit = []
    front.run_commit_hooks_on_set_autocommit_on = False
    front.queries_log.clear()
    front.autocommit = front.settings_dict["AUTOCOMMIT"]
    front._ka_pins = 0
    front._ka_constraint_pins = 0


def forget_inherited(front: BaseDatabaseWrapper, forget: Any) -> None:
    """In a forked child: let go of the parent's session a front of the forking thread used.

    ``forget`` lets go of a kept wrapper's inherited session without ending it (forking).
    """
    carrier = front._ka_carrier
    if carrier is not None:
        forget(carrier)
    _detach(front)
    _reset(front)


# -- holding a session -----------------------------------------------------------------------


@contextmanager
def hold_session(using: str | None = None) -> Iterator[None]:
    """Run the block on one server session, in release mode "transaction" too.

    For what lives in the session, not in a transaction: ``SET``, ``set_config(..., false)``,
    temporary tables, session advisory locks, ``LISTEN``, prepared statements. The session
    is taken at the block's first query and given back when it ends (and is idle between
    transactions); what the block left in it stays there for the next user: undo it before
    the block ends. In request mode, where a unit keeps its session anyway, nothing happens.
    """
    front = connections[using or DEFAULT_DB_ALIAS]
    pinned = is_front(front)
    if pinned:
        front._ka_pins += 1
    try:
        yield
    finally:
        if pinned and front._ka_pins > 0:
            front._ka_pins -= 1
            if not front._ka_pins:
                release_point(front)


# -- settings changes --------------------------------------------------------------------------


def _on_setting_changed(setting: str, **kwargs: Any) -> None:
    # Idle fronts cache what depends on these (time zone, backend, settings_dict).
    if setting in ("TIME_ZONE", "USE_TZ", "DATABASES") or setting.startswith(
            conf.SETTING_PREFIX):
        for pool in all_pools():
            drop_fronts(pool)


def drop_fronts(pool: AliasPool) -> None:
    """Forget the idle fronts of ``pool``: no session, but what they cached may be stale.

    Like a kept wrapper that is closed, each becomes this thread's (code that kept a
    reference, as Django's test runner does to destroy its databases, may still close it).
    """
    ident = _thread.get_ident()
    for front in pool.drop_fronts():
        front._thread_ident = ident


setting_changed.connect(_on_setting_changed, dispatch_uid="keepalive_mw.borrow")
