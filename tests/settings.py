"""Django settings for the keepalive_mw test suite.

Database coordinates can be overridden with KEEPALIVE_TEST_PG_* and
KEEPALIVE_TEST_MYSQL_* environment variables (NAME, HOST, PORT, USER, PASSWORD).
KEEPALIVE_TEST_RUN (a short label) is appended to the test databases' names, so that two
runs on one machine (two checkouts) do not share them; KEEPALIVE_TEST_PROXY_PORT then
gives the second run its own proxy port.
"""

import os
import tempfile


def _env(prefix, key, default):
    return os.environ.get(f"KEEPALIVE_TEST_{prefix}_{key}", default)


_TMP = tempfile.gettempdir()
_RUN = os.environ.get("KEEPALIVE_TEST_RUN", "")

def _server(prefix, engine, default_user, default_port, **extra):
    """A PostgreSQL or MariaDB entry, coordinates from KEEPALIVE_TEST_<prefix>_* variables."""
    return {
        "ENGINE": engine,
        "NAME": _env(prefix, "NAME", "test"),
        "USER": _env(prefix, "USER", default_user),
        "PASSWORD": _env(prefix, "PASSWORD", ""),
        "HOST": _env(prefix, "HOST", "127.0.0.1"),
        "PORT": _env(prefix, "PORT", default_port),
        **extra,
    }


def _pg(**extra):
    return _server("PG", "django.db.backends.postgresql", "postgres", "5432", **extra)


def _mysql(**extra):
    return _server("MYSQL", "django.db.backends.mysql", "root", "3306",
                   OPTIONS={"charset": "utf8mb4"}, **extra)


DATABASES = {
    "default": _pg(TEST={"NAME": f"keepalive_test{_RUN}"}),
    "mysql": _mysql(TEST={"NAME": f"keepalive_test_mysql{_RUN}", "CHARSET": "utf8mb4"}),
    # The same databases with AUTOCOMMIT off: writes persist only if committed.
    "pg_manual": _pg(AUTOCOMMIT=False, TEST={"MIRROR": "default"}),
    "mysql_manual": _mysql(AUTOCOMMIT=False, TEST={"MIRROR": "mysql"}),
    # PostgreSQL through tests/proxy.py, whose links a test can stall like a dead network.
    "pg_proxy": {**_pg(TEST={"MIRROR": "default"}), "HOST": "127.0.0.1",
                 "PORT": os.environ.get("KEEPALIVE_TEST_PROXY_PORT", "25439")},
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        # Files, not :memory:, so connection persistence is really exercised.
        "NAME": os.path.join(_TMP, f"keepalive_mw_tests{_RUN}.sqlite3"),
        "TEST": {"NAME": os.path.join(_TMP, f"keepalive_mw_tests_test{_RUN}.sqlite3")},
    },
}

DATABASE_ROUTERS = []

INSTALLED_APPS = [
    "keepalive_mw",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "tests.testapp",
]

MIDDLEWARE = ["keepalive_mw.middleware.KeepAliveMiddleware"]

ROOT_URLCONF = "tests.testapp.urls"

SECRET_KEY = "keepalive-mw-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

KEEPALIVE_MAX_AGE = 600

# KEEPALIVE_TEST_RELEASE=transaction runs the whole suite in release mode "transaction"
# (tests that count checkouts per request assume "request" and say so).
KEEPALIVE_RELEASE = os.environ.get("KEEPALIVE_TEST_RELEASE", "request")
