"""Retiring a live model version (issue 20): by a DPO, or by the engineer who owns it, with a reason."""

from __future__ import annotations

import pytest

from governance.models import AuditEvent
from governance.services import user_ensure_with_role
from mlops.models import ModelStatus, ModelVersion, TrainingRun
from tests.conftest import make_role_client
from tests.mlops.factories import make_snapshot


def _version(owner=None) -> ModelVersion:
    from mlops.services import external

    run, token = external.external_run_start(snapshot=make_snapshot(n=60, d=3), name="retire-me", epochs=1,
                                             batch_size=10, noise_multiplier=1.0, requested_by=owner)
    return external.external_run_report(run_id=run.pk, run_token=token, accountant="rdp",
                                        history=[[run.noise_multiplier, run.sample_rate, run.steps]],
                                        artifact_sha256="cd" * 32, actor=owner)


@pytest.mark.django_db
def test_the_owner_retires_with_a_reason_and_others_may_not():
    owner = make_role_client("ml_engineer", username="the-owner")
    version = _version(owner.user)
    url = f"/api/v1/models/{version.pk}/retire/"

    assert make_role_client("ml_engineer", username="someone-else").post(
        url, {"reason": "mine now"}, format="json").status_code == 403
    refused = owner.post(url, {}, format="json")
    assert refused.status_code == 400 and "reason" in refused.json()
    assert owner.post(url, {"reason": "x" * 501}, format="json").status_code == 400
    version.refresh_from_db()
    assert version.status == ModelStatus.ACTIVE  # nothing written by a refusal

    answer = owner.post(url, {"reason": "superseded by our own pipeline"}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["status"] == "retired" and answer.json()["servable"] is False
    version.refresh_from_db()
    assert version.status == ModelStatus.RETIRED
    assert version.status_reason == "retired by the-owner: superseded by our own pipeline"
    event = AuditEvent.objects.get(action="model_version.retired", object_id=str(version.pk))
    assert event.actor == "the-owner"
    # A second retirement is a conflict, not a new event.
    assert owner.post(url, {"reason": "again"}, format="json").status_code == 409
    assert AuditEvent.objects.filter(action="model_version.retired", object_id=str(version.pk)).count() == 1


@pytest.mark.django_db
def test_a_dpo_retires_any_version_from_its_admin_page(admin_client):
    client = admin_client  # a superuser holds the DPO role
    version = _version(owner=user_ensure_with_role(username="owner-2", role="ml_engineer"))
    page = client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert "Retire this version" in page and "outside the ledger" in page

    url = f"/admin/mlops/modelversion/{version.pk}/retire/"
    assert client.get(url).status_code == 200
    refused = client.post(url, {"reason": ""})
    assert refused.status_code == 400 and "This field is required" in refused.content.decode()
    assert client.post(url, {"reason": "erasure: the owner will not retrain"}).status_code == 302
    version.refresh_from_db()
    assert version.status == ModelStatus.RETIRED
    assert "Retire this version" not in client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert TrainingRun.objects.get(pk=version.training_run_id).executor == "external"


@pytest.mark.django_db
def test_an_ml_engineer_cannot_reach_the_admin_retire_page(client):
    engineer = user_ensure_with_role(username="eng-admin", role="ml_engineer")
    engineer.is_staff = True
    engineer.save(update_fields=["is_staff"])
    client.force_login(engineer)
    version = _version(owner=engineer)
    assert client.post(f"/admin/mlops/modelversion/{version.pk}/retire/", {"reason": "x"}).status_code == 403
    version.refresh_from_db()
    assert version.status == ModelStatus.ACTIVE
