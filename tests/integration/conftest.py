"""Fixtures of the integration tests.

KAMW_IT_VARIANT selects the example project's EXAMPLE_VARIANT under test (default
"keepalive"). Running the suite with "default", "conn_max_age"... shows that the tests
tell plain Django's behaviour apart from keepalive_mw's (they are expected to fail).
"""

import os
import re
import uuid

import pytest

from . import servers


def pytest_configure(config):
    config.addinivalue_line("markers", "servers: starts real gunicorn/uvicorn processes")


@pytest.fixture(scope="session")
def variant():
    return os.environ.get("KAMW_IT_VARIANT", "keepalive")


def _short(text, limit):
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:limit]


@pytest.fixture
def unique_name(request):
    """A name unique to this test run: for application_name (and database names)."""
    # Short: keepalive_mw appends " keepalive_mw <host>:<pid>" within PostgreSQL's 63 bytes.
    return f"kamw_{_short(request.node.name, 18)}_{uuid.uuid4().hex[:6]}"


class ExampleDatabase:
    """A freshly created and migrated example database on PostgreSQL or MariaDB."""

    def __init__(self, db, name, port=None, migrate_env=None):
        self.db = db
        self.name = name
        self.port = port
        self.migrate_env = migrate_env or {}  # e.g. EXAMPLE_TASKS=1: its apps' tables too

    def create(self):
        env = servers.example_env(self.db, **self.migrate_env) if self.migrate_env else None
        servers.prepare_database(self.db, self.name, port=self.port, env=env)
        return self

    def drop(self):
        servers.drop_database(self.db, self.name, port=self.port)

    def truncate(self):
        servers.truncate(self.db, self.name, port=self.port)

    def count_rows(self, label=None):
        return servers.count_rows(self.db, self.name, port=self.port, label=label)

    def env(self, variant, appname, **overrides):
        values = dict(EXAMPLE_DB_NAME=self.name, EXAMPLE_VARIANT=variant, EXAMPLE_APPNAME=appname)
        if self.port is not None:
            values["EXAMPLE_DB_PORT"] = self.port
        values.update(overrides)
        return servers.example_env(self.db, **values)


def _example_db(request, db, **migrate_env):
    suffix = _short(request.module.__name__.rsplit(".", 1)[-1].replace("test_", ""), 12)
    database = ExampleDatabase(db, f"kamw_{suffix}_{db[:2]}_{uuid.uuid4().hex[:6]}",
                               migrate_env=migrate_env).create()
    request.addfinalizer(database.drop)
    return database


@pytest.fixture(scope="module")
def pg_database(request):
    """A module-wide PostgreSQL example database."""
    return _example_db(request, "postgresql")


@pytest.fixture(scope="module")
def mysql_database(request):
    """A module-wide MariaDB example database."""
    return _example_db(request, "mysql")


@pytest.fixture(scope="module")
def pg_tasks_database(request):
    """A module-wide PostgreSQL example database with the task queue's tables
    (EXAMPLE_TASKS=1: Django's tasks framework and django_tasks_db)."""
    return _example_db(request, "postgresql", EXAMPLE_TASKS="1")
