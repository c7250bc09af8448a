"""The authorisation matrix over every API route and role (the shared API test base).

Every route under /api/v1/ is found by walking the URL configuration, so a new
endpoint is checked without writing a test for it.
"""

from __future__ import annotations

import pytest

from governance.roles import ALL_ROLES
from tests.api_routes import api_routes
from tests.conftest import make_role_client

ROUTES = api_routes()


def test_every_route_declares_roles():
    assert ROUTES, "no API routes found"
    closed = [r.id for r in ROUTES if not r.allowed]
    assert not closed, f"routes with no role allowed (missing role_permissions): {closed}"


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_anonymous_gets_401_with_reason(anon_client, route):
    response = anon_client.generic(route.method, route.path, data="{}", content_type="application/json")
    assert response.status_code == 401, response.content
    assert response.json()["detail"]
    assert response.headers.get("WWW-Authenticate", "").startswith("Token")


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_roles_are_enforced(route):
    for role in ALL_ROLES:
        client = make_role_client(role)
        response = client.generic(route.method, route.path, data="{}", content_type="application/json")
        if role in route.allowed:
            assert response.status_code not in (401, 403), (role, response.status_code, response.content)
        else:
            assert response.status_code == 403, (role, response.status_code, response.content)
            assert "may not" in response.json()["detail"]


@pytest.mark.django_db
def test_bad_credentials_get_401(anon_client):
    anon_client.credentials(HTTP_AUTHORIZATION="Token pl_not-a-real-key")
    response = anon_client.get("/api/v1/whoami/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid API key."
