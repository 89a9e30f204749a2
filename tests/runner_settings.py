"""tests.settings with other test database names, for a run of Django's own test runner."""

from tests.settings import *  # noqa: F401,F403
from tests.settings import _RUN, DATABASES

DATABASES = {alias: dict(db, TEST=dict(db.get("TEST", {}))) for alias, db in DATABASES.items()}
DATABASES["default"]["TEST"]["NAME"] = f"keepalive_runner_test{_RUN}"
DATABASES["mysql"]["TEST"]["NAME"] = f"keepalive_runner_test_mysql{_RUN}"
DATABASES["sqlite"]["TEST"]["NAME"] = DATABASES["sqlite"]["TEST"]["NAME"] + ".runner"
