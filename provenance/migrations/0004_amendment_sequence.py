"""Number each snapshot's amendments 1, 2, ... (existing rows in id order, which was their
commit order per snapshot), so training runs can record how many they had seen."""

from django.db import migrations, models

NUMBER_EXISTING = """
UPDATE provenance_snapshotamendment SET sequence = (
    SELECT COUNT(*) FROM provenance_snapshotamendment earlier
    WHERE earlier.snapshot_id = provenance_snapshotamendment.snapshot_id
      AND earlier.id <= provenance_snapshotamendment.id
)
"""


class Migration(migrations.Migration):
    dependencies = [("provenance", "0003_lean_indexes")]

    operations = [
        migrations.AddField(
            model_name="snapshotamendment", name="sequence", field=models.PositiveIntegerField(default=0),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="snapshotamendment", name="removed_subject_ids", field=models.JSONField(blank=True, null=True),
        ),
        migrations.RunSQL(NUMBER_EXISTING, migrations.RunSQL.noop),
        migrations.AlterModelOptions(name="snapshotamendment", options={"ordering": ["snapshot_id", "sequence"]}),
        migrations.AddConstraint(
            model_name="snapshotamendment",
            constraint=models.UniqueConstraint(fields=("snapshot", "sequence"), name="unique_snapshot_amendment_sequence"),
        ),
    ]
