from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from governance import services
from governance.models import ApiKey, AuditEvent
from governance.roles import roles_of


def _client(raw_key: str, scheme: str = "Token") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {raw_key}")
    return client


@pytest.mark.django_db
def test_create_api_key_command_creates_user_role_and_prints_key_once(capsys):
    call_command("create_api_key", "--user", "pipeline", "--role", "ml_engineer", "--name", "nightly")
    captured = capsys.readouterr()
    raw_key = captured.out.strip()
    assert raw_key.startswith("pl_")
    key = ApiKey.objects.get(user__username="pipeline")
    # Only the hash is stored.
    assert raw_key not in {key.key_hash, key.prefix, key.name}
    assert key.key_hash != raw_key and len(key.key_hash) == 64
    assert roles_of(key.user) == {"ml_engineer"}
    response = _client(raw_key).get("/api/v1/whoami/")
    assert response.status_code == 200
    assert response.json() == {"username": "pipeline", "roles": ["ml_engineer"]}
    assert AuditEvent.objects.filter(action="api_key.created").exists()


@pytest.mark.django_db
def test_bearer_scheme_is_accepted():
    user = services.user_ensure_with_role(username="u1", role="auditor")
    _, raw_key = services.api_key_create(user=user)
    assert _client(raw_key, "Bearer").get("/api/v1/whoami/").status_code == 200


@pytest.mark.django_db
def test_expired_key_is_refused_with_reason():
    user = services.user_ensure_with_role(username="u2", role="dpo")
    _, raw_key = services.api_key_create(user=user, expires_at=timezone.now() - timedelta(seconds=1))
    response = _client(raw_key).get("/api/v1/whoami/")
    assert response.status_code == 401
    assert response.json()["detail"] == "This API key has expired."


@pytest.mark.django_db
def test_revoked_key_is_refused_and_cannot_be_revoked_twice():
    user = services.user_ensure_with_role(username="u3", role="dpo")
    key, raw_key = services.api_key_create(user=user)
    services.api_key_revoke(api_key=key, actor=user)
    response = _client(raw_key).get("/api/v1/whoami/")
    assert response.status_code == 401
    assert response.json()["detail"] == "This API key has been revoked."
    with pytest.raises(services.ServiceConflict):
        services.api_key_revoke(api_key=key, actor=user)


@pytest.mark.django_db
def test_malformed_authorization_header_is_401():
    response = APIClient().get("/api/v1/whoami/", HTTP_AUTHORIZATION="Token")
    assert response.status_code == 401
    assert "Invalid Authorization header" in response.json()["detail"]


@pytest.mark.django_db
def test_unknown_role_is_refused():
    with pytest.raises(services.ServiceError) as excinfo:
        services.user_ensure_with_role(username="u4", role="root")
    assert excinfo.value.field == "role"


@pytest.mark.django_db
def test_user_without_role_gets_403_naming_the_reason():
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create(username="norole")
    _, raw_key = services.api_key_create(user=user)
    response = _client(raw_key).get("/api/v1/audit-events/")
    assert response.status_code == 403
    assert "Your role (none) may not" in response.json()["detail"]
