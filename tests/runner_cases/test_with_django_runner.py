"""Run by tests/test_testtools.py under Django's own test runner (manage.py test)."""

from django.core.signals import request_finished
from django.db import close_old_connections, connection
from django.test import TestCase, TransactionTestCase

from keepalive_mw import get_stats
from tests.helpers import in_thread, wsgi_get
from tests.testapp.models import Item


class ClientInsideTestCase(TestCase):
    databases = {"default"}

    def test_test_client_requests_share_the_test_transaction(self):
        Item.objects.create(name="seen by the view")
        for _ in range(3):
            self.assertEqual(self.client.get("/read/default/").content, b"1")
        # The test client connected Django's receiver again; the test connection lives on.
        self.assertIn(close_old_connections, [r[1]() for r in request_finished.receivers])
        self.assertEqual(self.client.get("/read/default/").content, b"1")
        self.assertEqual(Item.objects.count(), 1)
        self.assertTrue(connection.in_atomic_block)


class RequestsOnThreads(TransactionTestCase):
    databases = {"default", "mysql"}

    def test_real_handler_requests_reuse_kept_connections(self):
        for alias in ("default", "mysql"):
            pids = {in_thread(wsgi_get, f"/pid/{alias}/")[1] for _ in range(5)}
            self.assertEqual(len(pids), 1)
            self.assertGreaterEqual(get_stats()[alias]["connections_reused"], 4)
