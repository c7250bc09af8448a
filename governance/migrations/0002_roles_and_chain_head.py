from django.db import migrations

ROLES = ("dpo", "ml_engineer", "auditor")


def create_roles_and_head(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)
    AuditChainHead = apps.get_model("governance", "AuditChainHead")
    AuditChainHead.objects.get_or_create(pk=1, defaults={"position": 0, "hash": "0" * 64})


class Migration(migrations.Migration):
    dependencies = [("governance", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_roles_and_head, migrations.RunPython.noop)]
