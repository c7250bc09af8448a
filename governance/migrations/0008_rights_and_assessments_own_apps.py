"""Erasure and DPIA models move to their own apps (rights, assessments), tables unchanged.

State only: the tables keep their names (``db_table``) and their rows. The content types
are renamed rather than recreated, so permissions, group grants and admin history that
point at them stay attached.
"""

from django.db import migrations

MOVED = {
    "rights": ["erasurerequest", "erasureremediationoverride", "erasurestep", "recipientnotification", "erasurereceipt"],
    "assessments": ["dpia", "dpiascreeninganswer", "dpiarisk"],
}


def rename_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for app_label, models in MOVED.items():
        for model in models:
            if ContentType.objects.filter(app_label=app_label, model=model).exists():
                continue
            ContentType.objects.filter(app_label="governance", model=model).update(app_label=app_label)


def restore_content_types(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for app_label, models in MOVED.items():
        ContentType.objects.filter(app_label=app_label, model__in=models).update(app_label="governance")


class Migration(migrations.Migration):
    dependencies = [
        ("governance", "0007_subject_reference_not_indexed"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ErasureReceipt"),
                migrations.DeleteModel(name="RecipientNotification"),
                migrations.DeleteModel(name="ErasureStep"),
                migrations.DeleteModel(name="ErasureRemediationOverride"),
                migrations.DeleteModel(name="ErasureRequest"),
                migrations.DeleteModel(name="DpiaRisk"),
                migrations.DeleteModel(name="DpiaScreeningAnswer"),
                migrations.DeleteModel(name="Dpia"),
            ],
            database_operations=[],
        ),
        migrations.RunPython(rename_content_types, restore_content_types),
    ]
