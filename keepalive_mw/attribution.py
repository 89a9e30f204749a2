"""Name PostgreSQL sessions after the host and process that opened them.

``application_name`` becomes ``"<configured name or django> keepalive_mw <host>:<pid>"`` so
that ``keepalive_status`` (and anyone reading ``pg_stat_activity``) can tell which worker
process holds which session, while the configured name stays first and recognisable.

Through a pooler in transaction mode the server sessions are the pooler's, lent to any
client for a transaction, and the pooler sends ``SET application_name`` whenever it lends
one to a client whose name differs from the last: there the name is the same for every
process (``"<configured name or django> keepalive_mw"``), which costs no extra statement.
"""

from __future__ import annotations

import os
import re
import socket
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

MARK = "keepalive_mw"
HOST = socket.gethostname()
# Most characters of the host name kept in application_name.
HOST_CHARS = 20
# PostgreSQL keeps the first NAMEDATALEN - 1 bytes of application_name.
_LIMIT = 63
_PATTERN = re.compile(rf"^(?P<name>.*) {MARK}(?: (?P<host>[^ :]+):(?P<pid>\d+))?$")


class Origin(NamedTuple):
    name: str
    host: str | None  # None: a name without the process (through a transaction pooler)
    pid: int | None


def application_name(configured: str | None, pid: int | None = None, *,
                     per_process: bool = True) -> str:
    """Return ``"<configured> keepalive_mw <host>:<pid>"`` within PostgreSQL's 63 bytes.

    When it is too long the host name is cut first (to no less than 4 characters), then
    the configured name. ``per_process=False``: ``"<configured> keepalive_mw"``.
    """
    base = (configured or "django").encode()
    if not per_process:
        suffix = f" {MARK}".encode()
        return base[: _LIMIT - len(suffix)].decode(errors="ignore") + suffix.decode()
    tail = f":{os.getpid() if pid is None else pid}"
    room = _LIMIT - len(base) - len(f" {MARK} ") - len(tail)
    host = HOST[: max(4, min(HOST_CHARS, room))]
    suffix = f" {MARK} {host}{tail}".encode()
    return base[: _LIMIT - len(suffix)].decode(errors="ignore") + suffix.decode()


def origin(name: str | None) -> Origin | None:
    """Return who opened a session, from its application_name; None if not keepalive_mw."""
    match = _PATTERN.match(name or "")
    if match is None:
        return None
    pid = match["pid"]
    return Origin(match["name"], match["host"], None if pid is None else int(pid))


def install(wrapper: BaseDatabaseWrapper, *, per_process: bool = True) -> None:
    """Make the wrapper's future connections carry this process's name (PostgreSQL)."""
    if wrapper.vendor != "postgresql":
        return
    django_params = wrapper.get_connection_params

    def get_connection_params() -> dict[str, Any]:
        params = django_params()
        params["application_name"] = application_name(params.get("application_name"),
                                                      per_process=per_process)
        return params

    wrapper.get_connection_params = get_connection_params
