"""Settings of the example project, driven by environment variables.

EXAMPLE_DB            postgresql | mysql | sqlite (default sqlite)
EXAMPLE_SQLITE_PATH   SQLite file (default: keepalive_example.sqlite3 in the temp dir)
EXAMPLE_DB_NAME       database name (default "keepalive_example")
EXAMPLE_DB_HOST/PORT/USER/PASSWORD
                      server coordinates (defaults: the local services)
EXAMPLE_VARIANT       keepalive (default): keepalive_mw installed, its middleware first
                      default: Django's CONN_MAX_AGE=0, no keepalive_mw
                      conn_max_age: CONN_MAX_AGE=600
                      conn_max_age_checks: CONN_MAX_AGE=600 + CONN_HEALTH_CHECKS
                      pool: OPTIONS["pool"]=True (psycopg 3 on PostgreSQL only)
EXAMPLE_AUTOCOMMIT    "1" (default) or "0" (DATABASES AUTOCOMMIT False)
EXAMPLE_APPNAME       PostgreSQL application_name (lets tests filter pg_stat_activity)
EXAMPLE_CONN_MAX_AGE  explicit CONN_MAX_AGE (overrides the variant's value)
EXAMPLE_DB_KEEPALIVE  "0": per-alias opt-out, DATABASES["default"]["KEEPALIVE"] = False
EXAMPLE_DISABLE_SERVER_SIDE_CURSORS
                      "1": DATABASES DISABLE_SERVER_SIDE_CURSORS True (PgBouncer in
                      transaction mode)
EXAMPLE_COUNT_CONNECTIONS
                      a file: every new database connection appends a line to it
                      (pid and alias), see example/shop/apps.py; used by the demo
EXAMPLE_QUERY_AT_IMPORT
                      "1": example/wsgi.py (and example/celery_app.py) run one query at
                      import (see there)
EXAMPLE_QUERY_BEFORE_FORK
                      "1": example/celery_app.py runs one query in the worker's main
                      process after worker_init, before its pool forks
EXAMPLE_IMPORT_PID_FILE
                      where that query's backend pid is written

Workers (the variants apply to them too):
EXAMPLE_BROKER_URL    Celery broker (default redis://127.0.0.1:6379/0), see
                      example/celery_app.py and example/shop/tasks.py
EXAMPLE_RESULT_BACKEND
                      Celery result backend, e.g. a redis:// URL (default: none)
EXAMPLE_CELERY_DB_REUSE_MAX
                      CELERY_DB_REUSE_MAX: Celery's Django fixup closes connections only
                      every N tasks
EXAMPLE_TASKS         "1": Django's tasks framework with django_tasks_db's database backend
                      (plus the django_tasks backport before Django 6), so that
                      ``python -m django db_worker`` runs example/shop/jobs.py's tasks
EXAMPLE_TASKS_DB_ALIAS
                      "1" (with EXAMPLE_TASKS): the task queue's tables go through a
                      second alias "tasks", the same database with autocommit on (see
                      example/routers.py)
Channels: ``daphne example.asgi_channels:application`` (example/shop/consumers.py).
KEEPALIVE_*           any such variable holds a JSON value passed into settings,
                      e.g. KEEPALIVE_MAX_AGE=30, KEEPALIVE_END_OF_REQUEST='"rollback"'
"""

import json
import os
import tempfile

from django.core.exceptions import ImproperlyConfigured

VARIANTS = ("keepalive", "default", "conn_max_age", "conn_max_age_checks", "pool")
ENGINES = {
    "postgresql": "django.db.backends.postgresql",
    "mysql": "django.db.backends.mysql",
    "sqlite": "django.db.backends.sqlite3",
}
DEFAULT_PORTS = {"postgresql": "5432", "mysql": "3306"}
DEFAULT_USERS = {"postgresql": "postgres", "mysql": "root"}


def _env(name, default=""):
    return os.environ.get(name, default)


EXAMPLE_DB = _env("EXAMPLE_DB", "sqlite")
EXAMPLE_VARIANT = _env("EXAMPLE_VARIANT", "keepalive")
if EXAMPLE_DB not in ENGINES:
    raise ImproperlyConfigured(f"EXAMPLE_DB must be one of {sorted(ENGINES)}, not {EXAMPLE_DB!r}")
if EXAMPLE_VARIANT not in VARIANTS:
    raise ImproperlyConfigured(f"EXAMPLE_VARIANT must be one of {VARIANTS}, not {EXAMPLE_VARIANT!r}")
if EXAMPLE_VARIANT == "pool" and EXAMPLE_DB != "postgresql":
    raise ImproperlyConfigured("EXAMPLE_VARIANT=pool needs EXAMPLE_DB=postgresql (psycopg 3)")

BASE_DIR = os.path.dirname(os.path.abspath(__file__))
SECRET_KEY = "keepalive-mw-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "example.urls"
WSGI_APPLICATION = "example.wsgi.application"

INSTALLED_APPS = ["example.shop"]
MIDDLEWARE = []
if EXAMPLE_VARIANT == "keepalive":
    INSTALLED_APPS = INSTALLED_APPS + ["keepalive_mw"]  # last: README, Setup
    MIDDLEWARE = ["keepalive_mw.middleware.KeepAliveMiddleware"] + MIDDLEWARE

_db = {
    "ENGINE": ENGINES[EXAMPLE_DB],
    "AUTOCOMMIT": _env("EXAMPLE_AUTOCOMMIT", "1") != "0",
    "CONN_MAX_AGE": 0,
    "CONN_HEALTH_CHECKS": False,
    "OPTIONS": {},
}
if EXAMPLE_DB == "sqlite":
    _db["NAME"] = _env(
        "EXAMPLE_SQLITE_PATH", os.path.join(tempfile.gettempdir(), "keepalive_example.sqlite3")
    )
else:
    _db.update(
        NAME=_env("EXAMPLE_DB_NAME", "keepalive_example"),
        HOST=_env("EXAMPLE_DB_HOST", "127.0.0.1"),
        PORT=_env("EXAMPLE_DB_PORT", DEFAULT_PORTS[EXAMPLE_DB]),
        USER=_env("EXAMPLE_DB_USER", DEFAULT_USERS[EXAMPLE_DB]),
        PASSWORD=_env("EXAMPLE_DB_PASSWORD", ""),
    )
if EXAMPLE_DB == "postgresql" and _env("EXAMPLE_APPNAME"):
    _db["OPTIONS"]["application_name"] = _env("EXAMPLE_APPNAME")
if EXAMPLE_DB == "mysql":
    _db["OPTIONS"]["charset"] = "utf8mb4"

if EXAMPLE_VARIANT == "conn_max_age":
    _db["CONN_MAX_AGE"] = 600
elif EXAMPLE_VARIANT == "conn_max_age_checks":
    _db["CONN_MAX_AGE"] = 600
    _db["CONN_HEALTH_CHECKS"] = True
elif EXAMPLE_VARIANT == "pool":
    _db["OPTIONS"]["pool"] = True
if _env("EXAMPLE_CONN_MAX_AGE"):
    _db["CONN_MAX_AGE"] = json.loads(_env("EXAMPLE_CONN_MAX_AGE"))
if _env("EXAMPLE_DB_KEEPALIVE") == "0":
    _db["KEEPALIVE"] = False
if _env("EXAMPLE_DISABLE_SERVER_SIDE_CURSORS") == "1":
    _db["DISABLE_SERVER_SIDE_CURSORS"] = True

DATABASES = {"default": _db}

CELERY_BROKER_URL = _env("EXAMPLE_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = _env("EXAMPLE_RESULT_BACKEND") or None
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
if _env("EXAMPLE_CELERY_DB_REUSE_MAX"):
    CELERY_DB_REUSE_MAX = int(_env("EXAMPLE_CELERY_DB_REUSE_MAX"))

if _env("EXAMPLE_TASKS") == "1":
    import importlib.util

    if importlib.util.find_spec("django.tasks") is None:  # Django < 6: the backport
        INSTALLED_APPS.append("django_tasks")
    INSTALLED_APPS.append("django_tasks_db")
    TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    if _env("EXAMPLE_TASKS_DB_ALIAS") == "1":
        DATABASES["tasks"] = {**_db, "AUTOCOMMIT": True, "OPTIONS": dict(_db["OPTIONS"])}
        DATABASE_ROUTERS = ["example.routers.TasksRouter"]

# Every KEEPALIVE_* environment variable holds a JSON value.
for _name, _value in os.environ.items():
    if _name.startswith("KEEPALIVE_"):
        try:
            globals()[_name] = json.loads(_value)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{_name} must hold a JSON value, not {_value!r}") from exc

# Send errors (tracebacks of 500s) to stderr, so test harnesses can show them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "keepalive_mw": {
            "handlers": ["stderr"],
            "level": _env("EXAMPLE_KEEPALIVE_LOG_LEVEL", "WARNING"),
            "propagate": False,
        },
    },
}
