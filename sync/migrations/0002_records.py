"""Record-level sync (PROTOCOL.md §7): record versions, seqs, positions and tombstones; the audit log's tables.

Existing records become version 1, changed at their repository's version,
with their insertion order (``seq``) as their position in the change order,
and name their repository; each repository gets its last position, a new
epoch and no tombstones. The data step is plain ``UPDATE`` statements, so a
large installation migrates in a few statements rather than a row at a time.
"""

import secrets

import django.db.models.deletion
from django.db import migrations, models


def fill_record_states(apps, schema_editor):
    connection = schema_editor.connection
    q = connection.ops.quote_name
    repository, store, record = (
        q(apps.get_model("sync", name)._meta.db_table) for name in ("Repository", "Store", "Record")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {record} SET {q('version')} = 1, {q('position')} = {q('seq')}, "
            f"{q('repository_id')} = (SELECT s.{q('repository_id')} FROM {store} s "
            f"WHERE s.{q('id')} = {record}.{q('store_id')}), "
            f"{q('changed')} = (SELECT r.{q('version')} FROM {repository} r JOIN {store} s "
            f"ON s.{q('repository_id')} = r.{q('id')} WHERE s.{q('id')} = {record}.{q('store_id')})"
        )
        cursor.execute(
            f"UPDATE {repository} SET {q('position')} = COALESCE((SELECT MAX(x.{q('position')}) FROM {record} x "
            f"WHERE x.{q('repository_id')} = {repository}.{q('id')}), 0)"
        )
    Repository = apps.get_model("sync", "Repository")
    for pk in Repository.objects.using(schema_editor.connection.alias).values_list("pk", flat=True):
        Repository.objects.using(schema_editor.connection.alias).filter(pk=pk).update(epoch=secrets.token_hex(8))
    AuditCounter = apps.get_model("sync", "AuditCounter")
    AuditCounter.objects.using(schema_editor.connection.alias).get_or_create(pk=1, defaults={"next": 1})


class Migration(migrations.Migration):
    dependencies = [
        ("sync", "0001_initial"),
    ]

    operations = [
        # Record rows keep no foreign key constraints (see sync.models.Record); dropped first, so the data
        # step below queues no checks.
        migrations.AlterField(
            model_name="record",
            name="store",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="records",
                to="sync.store",
            ),
        ),
        migrations.AddField(
            model_name="repository",
            name="position",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="repository",
            name="epoch",
            field=models.CharField(default="", max_length=32),
        ),
        migrations.AddField(
            model_name="store",
            name="tombstone_count",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="record",
            name="version",
            field=models.BigIntegerField(default=1),
        ),
        migrations.AddField(
            model_name="record",
            name="changed",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="record",
            name="position",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="record",
            name="deleted",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="record",
            name="repository",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="sync.repository",
            ),
        ),
        migrations.CreateModel(
            name="AuditBatch",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("seq", models.BigIntegerField(unique=True)),
                ("end", models.BigIntegerField(db_index=True)),
                ("timestamp", models.CharField(max_length=64)),
                ("user_id", models.CharField(max_length=64)),
                ("username", models.CharField(max_length=150)),
                ("action", models.CharField(max_length=32)),
                ("target_user_id", models.CharField(max_length=64, null=True)),
                ("target_username", models.CharField(max_length=150, null=True)),
                ("ip", models.CharField(max_length=64, null=True)),
                ("epoch", models.CharField(max_length=32, null=True)),
                ("repository_version", models.BigIntegerField(null=True)),
                ("payload", models.TextField(default="")),
            ],
            options={
                "verbose_name_plural": "audit batches",
                "indexes": [models.Index(fields=["user_id", "end"], name="sync_auditbatch_user_end")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("user_id", "epoch", "repository_version"), name="sync_auditbatch_change_set"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="AuditCounter",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("next", models.BigIntegerField(default=1)),
            ],
        ),
        migrations.RunPython(fill_record_states, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="record",
            name="repository",
            field=models.ForeignKey(
                db_constraint=False,
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="sync.repository",
            ),
        ),
        migrations.RemoveIndex(model_name="record", name="sync_record_store_seq"),
        migrations.AddIndex(
            model_name="record",
            index=models.Index(fields=["repository", "position"], name="sync_record_repo_position"),
        ),
        migrations.AddIndex(
            model_name="record",
            index=models.Index(
                condition=models.Q(("deleted", True)), fields=["store", "key"], name="sync_record_tombstones"
            ),
        ),
    ]
