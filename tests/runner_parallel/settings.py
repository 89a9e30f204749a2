"""tests.runner_settings with this app and its own test database names."""

from tests.runner_settings import *  # noqa: F401,F403
from tests.runner_settings import _RUN, DATABASES, INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.runner_parallel"]
DATABASES = {alias: dict(db, TEST=dict(db.get("TEST", {}))) for alias, db in DATABASES.items()}
DATABASES["default"]["TEST"]["NAME"] = f"keepalive_parallel_test{_RUN}"
DATABASES["mysql"]["TEST"]["NAME"] = f"keepalive_parallel_test_mysql{_RUN}"
