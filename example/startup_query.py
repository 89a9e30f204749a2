"""One query outside any request, its connection left open: what a process that forks
afterwards (gunicorn ``--preload``, Celery prefork) hands down to its children."""

from __future__ import annotations

import os


def run_startup_query() -> object:
    """Query the session id; write it to EXAMPLE_IMPORT_PID_FILE when that is set."""
    from example.views import backend_pid

    session = backend_pid()
    pid_file = os.environ.get("EXAMPLE_IMPORT_PID_FILE")
    if pid_file:
        with open(pid_file + ".tmp", "w") as fh:
            fh.write(f"{session}\n")
        os.replace(pid_file + ".tmp", pid_file)
    return session
