import gc
import os

import pytest
from django.conf import settings


def _unreachable_databases():
    """Return a list of "alias: reason" for servers we cannot connect to."""
    problems = []
    pg = settings.DATABASES["default"]
    try:
        import psycopg

        psycopg.connect(
            host=pg["HOST"], port=int(pg["PORT"]), user=pg["USER"],
            password=pg["PASSWORD"] or None, dbname=pg["NAME"], connect_timeout=5,
        ).close()
    except Exception as exc:  # noqa: BLE001 - any failure is reported
        problems.append(f"default (PostgreSQL {pg['HOST']}:{pg['PORT']}): {exc!r}")
    my = settings.DATABASES["mysql"]
    try:
        import MySQLdb

        MySQLdb.connect(
            host=my["HOST"], port=int(my["PORT"]), user=my["USER"],
            passwd=my["PASSWORD"], connect_timeout=5,
        ).close()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"mysql (MariaDB {my['HOST']}:{my['PORT']}): {exc!r}")
    return problems


@pytest.fixture(scope="session", autouse=True)
def _require_databases():
    """Never skip silently: unreachable databases are a loud failure."""
    problems = _unreachable_databases()
    if not problems:
        return
    message = (
        "keepalive_mw tests need PostgreSQL and MariaDB running "
        "(see tests/settings.py, KEEPALIVE_TEST_PG_*/KEEPALIVE_TEST_MYSQL_* env vars):\n  "
        + "\n  ".join(problems)
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.exit(message, returncode=1)
    pytest.fail(message, pytrace=False)


@pytest.fixture(autouse=True)
def _fresh_pools():
    """Each test starts and ends with no kept connection and zeroed counters."""
    from keepalive_mw import lifecycle
    from keepalive_mw.pool import all_pools

    def reset():
        lifecycle.close_idle()
        for pool in all_pools():
            pool.stats.update(dict.fromkeys(pool.stats, 0))
            pool.size_peak = pool.size

    reset()
    yield
    gc.collect()  # wrappers of threads that died holding them close with their sockets
    reset()
