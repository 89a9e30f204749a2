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
    from example.startup_query import run_startup_query

    run_startup_query()
