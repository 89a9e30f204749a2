"""An app with a data migration, and test cases for Django's parallel test runner.

Run by tests/test_testtools.py as ``manage.py test --parallel 2`` with the settings here.
The module of test cases is not named test_*.py: it needs this app installed, which the
pytest settings do not do.
"""

# Names of the rows the data migration creates.
SEEDS = ("planted by a data migration", "and another")
