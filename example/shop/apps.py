import os

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "example.shop"
    label = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        path = os.environ.get("EXAMPLE_COUNT_CONNECTIONS")
        if path:
            from django.db.backends.signals import connection_created

            connection_created.connect(_count_connection(path), weak=False,
                                       dispatch_uid="example.count_connections")


def _count_connection(path):
    """A connection_created receiver appending "<pid> <alias>" to ``path``.

    One short O_APPEND write per connection: lines from several processes never mix.
    """

    def receiver(sender, connection, **kwargs):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {connection.alias}\n".encode())
        finally:
            os.close(fd)

    return receiver
