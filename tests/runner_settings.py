"""tests.settings with other test database names, for a run of Django's own test runner."""

from tests.settings import *  # noqa: F401,F403
from tests.settings import DATABASES

DATABASES = {alias: dict(db, TEST=dict(db.get("TEST", {}))) for alias, db in DATABASES.items()}
DATABASES["default"]["TEST"]["NAME"] = "keepalive_runner_test"
DATABASES["mysql"]["TEST"]["NAME"] = "keepalive_runner_test_mysql"
DATABASES["sqlite"]["TEST"]["NAME"] = DATABASES["sqlite"]["TEST"]["NAME"] + ".runner"
