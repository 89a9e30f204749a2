"""WSGI entry point: ``gunicorn example.wsgi:application``.

With EXAMPLE_QUERY_AT_IMPORT=1 one query runs at import time, outside any request,
and the connection is left open: under ``gunicorn --preload`` that happens in the
master, and the forked workers inherit the open connection (the fork-safety case).
The backend pid of that session is written to EXAMPLE_IMPORT_PID_FILE when set.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

application = get_wsgi_application()

if os.environ.get("EXAMPLE_QUERY_AT_IMPORT") == "1":
    from example.views import backend_pid

    _import_pid = backend_pid()
    _pid_file = os.environ.get("EXAMPLE_IMPORT_PID_FILE")
    if _pid_file:
        with open(_pid_file + ".tmp", "w") as fh:
            fh.write(f"{_import_pid}\n")
        os.replace(_pid_file + ".tmp", _pid_file)
