from django.db import models


class Row(models.Model):
    label = models.CharField(max_length=50)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.label
