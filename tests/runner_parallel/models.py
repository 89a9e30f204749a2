from django.db import models


class Seed(models.Model):
    """Rows that only the data migration creates: a flush followed by post_migrate does not
    bring them back, only the test runner's serialized contents do."""

    name = models.CharField(max_length=100)
