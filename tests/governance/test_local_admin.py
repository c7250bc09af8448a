from __future__ import annotations

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command
from django.test import override_settings

from governance.roles import roles_of


@pytest.mark.django_db
def test_make_run_creates_a_local_dpo_admin_and_says_how_to_log_in(capsys, settings):
    with override_settings(DEBUG=True):
        call_command("ensure_local_admin")
        first = capsys.readouterr().out
        call_command("ensure_local_admin")  # idempotent: same password the second time
        second = capsys.readouterr().out
    password = (settings.STORAGE_ROOT / "local-admin-password.txt").read_text().strip()
    assert f"password '{password}'" in first and f"password '{password}'" in second
    user = authenticate(username="admin", password=password)
    assert user is not None and user.is_staff and roles_of(user) == {"dpo"}


@pytest.mark.django_db
def test_local_admin_is_refused_outside_development():
    with override_settings(DEBUG=False), pytest.raises(CommandError, match="local development"):
        call_command("ensure_local_admin")
