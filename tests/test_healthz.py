from __future__ import annotations

import pytest
from django.test import override_settings


@pytest.mark.django_db
def test_healthz_reports_database_and_broker(client, settings):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == "up"
    if settings.CELERY_EMBEDDED:
        assert body["checks"]["broker"].startswith("embedded")
    else:
        assert body["checks"]["broker"] == "up"


@pytest.mark.django_db
def test_healthz_answers_503_naming_a_broker_that_is_down(client):
    # Nothing listens on port 1.
    with override_settings(CELERY_EMBEDDED=False, CELERY_BROKER_URL="redis://127.0.0.1:1/0"):
        response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["broker"]
    assert body["checks"]["broker"].startswith("down")
    assert body["checks"]["database"] == "up"
