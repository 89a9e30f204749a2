"""TransactionTestCases with serialized_rollback, for ``manage.py test --parallel 2``.

Each class's first test sees the rows of the data migration (the worker's clone of the
test database has them) and deletes them; the flush after it empties the table; the
second test sees them again only if the worker restored the serialized contents, which
the runner stored on the connection object before it forked the worker.
"""

from django.db import connections
from django.test import TransactionTestCase

from keepalive_mw.pool import kept_of
from tests.runner_parallel import SEEDS
from tests.runner_parallel.models import Seed


class SerializedRollback:
    serialized_rollback = True
    databases = {"default"}

    def check_seeds_then_delete_them(self):
        self.assertIsNotNone(kept_of(connections["default"]), "the worker's connection is kept")
        self.assertEqual(sorted(Seed.objects.values_list("name", flat=True)),
                         sorted(SEEDS))
        Seed.objects.all().delete()


class SerializedRollbackFirst(SerializedRollback, TransactionTestCase):
    def test_1_seeds_are_there(self):
        self.check_seeds_then_delete_them()

    def test_2_seeds_are_back(self):
        self.check_seeds_then_delete_them()


class SerializedRollbackSecond(SerializedRollback, TransactionTestCase):
    def test_1_seeds_are_there(self):
        self.check_seeds_then_delete_them()

    def test_2_seeds_are_back(self):
        self.check_seeds_then_delete_them()
