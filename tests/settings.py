"""Django settings for the keepalive_mw test suite.

Database coordinates can be overridden with KEEPALIVE_TEST_PG_* and
KEEPALIVE_TEST_MYSQL_* environment variables (NAME, HOST, PORT, USER, PASSWORD).
"""

import os
import tempfile


def _env(prefix, key, default):
    return os.environ.get(f"KEEPALIVE_TEST_{prefix}_{key}", default)


_TMP = tempfile.gettempdir()

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _env("PG", "NAME", "test"),
        "USER": _env("PG", "USER", "postgres"),
        "PASSWORD": _env("PG", "PASSWORD", ""),
        "HOST": _env("PG", "HOST", "127.0.0.1"),
        "PORT": _env("PG", "PORT", "5432"),
        "CONN_MAX_AGE": 0,
        "TEST": {"NAME": "keepalive_test"},
    },
    "mysql": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": _env("MYSQL", "NAME", "test"),
        "USER": _env("MYSQL", "USER", "root"),
        "PASSWORD": _env("MYSQL", "PASSWORD", ""),
        "HOST": _env("MYSQL", "HOST", "127.0.0.1"),
        "PORT": _env("MYSQL", "PORT", "3306"),
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"charset": "utf8mb4"},
        "TEST": {"NAME": "keepalive_test_mysql", "CHARSET": "utf8mb4"},
    },
    # The same databases with AUTOCOMMIT off: writes persist only if committed.
    "pg_manual": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _env("PG", "NAME", "test"),
        "USER": _env("PG", "USER", "postgres"),
        "PASSWORD": _env("PG", "PASSWORD", ""),
        "HOST": _env("PG", "HOST", "127.0.0.1"),
        "PORT": _env("PG", "PORT", "5432"),
        "AUTOCOMMIT": False,
        "TEST": {"MIRROR": "default"},
    },
    # PostgreSQL through tests/proxy.py, whose links a test can stall like a dead network.
    "pg_proxy": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _env("PG", "NAME", "test"),
        "USER": _env("PG", "USER", "postgres"),
        "PASSWORD": _env("PG", "PASSWORD", ""),
        "HOST": "127.0.0.1",
        "PORT": os.environ.get("KEEPALIVE_TEST_PROXY_PORT", "25439"),
        "TEST": {"MIRROR": "default"},
    },
    "mysql_manual": {
        "ENGINE": "django.db.backends.mysql",
        "NAME": _env("MYSQL", "NAME", "test"),
        "USER": _env("MYSQL", "USER", "root"),
        "PASSWORD": _env("MYSQL", "PASSWORD", ""),
        "HOST": _env("MYSQL", "HOST", "127.0.0.1"),
        "PORT": _env("MYSQL", "PORT", "3306"),
        "OPTIONS": {"charset": "utf8mb4"},
        "AUTOCOMMIT": False,
        "TEST": {"MIRROR": "mysql"},
    },
    "sqlite": {
        "ENGINE": "django.db.backends.sqlite3",
        # Files, not :memory:, so connection persistence is really exercised.
        "NAME": os.path.join(_TMP, "keepalive_mw_tests.sqlite3"),
        "CONN_MAX_AGE": 0,
        "TEST": {"NAME": os.path.join(_TMP, "keepalive_mw_tests_test.sqlite3")},
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
