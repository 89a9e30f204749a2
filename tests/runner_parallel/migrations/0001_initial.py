from django.db import migrations, models

from tests.runner_parallel import SEEDS


def plant(apps, schema_editor):
    Seed = apps.get_model("runner_parallel", "Seed")
    Seed.objects.using(schema_editor.connection.alias).bulk_create(
        [Seed(name=name) for name in SEEDS])


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Seed",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False,
                                           verbose_name="ID")),
                ("name", models.CharField(max_length=100)),
            ],
        ),
        migrations.RunPython(plant, migrations.RunPython.noop),
    ]
