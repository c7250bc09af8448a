"""Erasure of a person in a model trained outside the ledger (issue 20): the ledger cannot
retrain it, so the erasure waits for the model's owner, and the certificate says what happened."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from governance.models import AuditEvent, ConsentEvent
from mlops.models import ModelStatus, ModelVersion
from mlops.services import external
from rights import execution, services
from rights.models import ErasureRequest, ErasureStatus, ErasureStep, ErasureStepStatus
from rights.services.dispatch import erasure_requests_waiting_resolved
from tests.conftest import make_role_client
from tests.mlops.helpers import wait_for
from tests.rights import helpers as h
from tests.rights.test_workspace_requests import pdf_text

CAROL = "carol.outside@example.org"


def _world():
    carol = h.subject_for(CAROL)
    act = h.activity()
    ds = h.people_dataset(act=act, people=[carol, *h.crowd(30)])
    ConsentEvent.objects.create(
        event_id=f"carol-given-{carol.pk}", subject=carol, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    return carol, ds, h.snapshot_of(ds)


def _trained_outside(*, snapshot, name: str, owner, remediates=None, weights: bytes | None = None) -> ModelVersion:
    """An external run reserved and reported with the plan's own history (what Opacus records);
    with ``weights``, the report also hands the ledger the file."""
    import hashlib
    import io

    run, token = external.external_run_start(
        snapshot=snapshot, name=name, epochs=1, batch_size=8, noise_multiplier=1.0, remediates=remediates,
        requested_by=owner,
    )
    return external.external_run_report(
        run_id=run.pk, run_token=token, accountant="rdp",
        history=[[run.noise_multiplier, run.sample_rate, run.steps]],
        artifact_sha256=hashlib.sha256(weights).hexdigest() if weights else "ab" * 32,
        artifact=io.BytesIO(weights) if weights else None, actor=owner,
    )


def _erasure_started() -> ErasureRequest:
    request = services.erasure_request_receive(identifier=CAROL, ground="17_1_a")
    services.erasure_request_verify(erasure_request=request, method="signed letter")
    ErasureRequest.objects.filter(pk=request.pk).update(status=ErasureStatus.IN_PROGRESS,
                                                        execution_started_at=timezone.now())
    return request


def _owner():
    from governance.services import user_ensure_with_role

    return user_ensure_with_role(username=f"owner-{uuid.uuid4().hex[:8]}", role="ml_engineer")


@pytest.mark.django_db(transaction=True)
def test_the_erasure_waits_for_the_owner_then_certifies_the_retrained_version(celery_worker):
    carol, ds, snap = _world()
    owner = _owner()
    outside = _trained_outside(snapshot=snap, name="outside-cnn", owner=owner)
    assert outside.external and outside.status == ModelStatus.ACTIVE
    request = _erasure_started()

    answer = execution.erasure_request_execute(request_id=request.pk)

    # Nothing the ledger can do to the weights: the version is tainted, the step waits, no certificate.
    assert answer["status"] == ErasureStatus.IN_PROGRESS
    assert answer["waiting_for_owner"] == [
        {"name": "outside-cnn", "model_version": outside.pk, "version": 1, "owner": owner.username}]
    outside.refresh_from_db()
    assert outside.status == ModelStatus.TAINTED
    step = ErasureStep.objects.get(request=request, name="remediate_lineage_outside-cnn")
    assert step.status == ErasureStepStatus.WAITING
    request.refresh_from_db()
    assert request.status == ErasureStatus.IN_PROGRESS and not request.certificate_path
    assert not ErasureStep.objects.filter(request=request, name__in=["delete_subject", "certificate"]).exists()
    # Executing again while nothing changed waits again, audited once.
    execution.erasure_request_execute(request_id=request.pk)
    assert AuditEvent.objects.filter(action="erasure.lineage_awaiting_owner", object_id=str(request.pk)).count() == 1
    assert erasure_requests_waiting_resolved() == []

    # The owner retrains on a fresh snapshot (the person is no longer in it) and reports.
    fresh = h.snapshot_of(ds)
    retrained = _trained_outside(snapshot=fresh, name="outside-cnn", owner=owner, remediates=outside)
    assert retrained.version == 2 and retrained.status == ModelStatus.ACTIVE

    # Its registration resumes the erasure on the worker, which completes it.
    wait_for(lambda: ErasureRequest.objects.get(pk=request.pk).status == ErasureStatus.COMPLETED,
             what="the erasure to resume and complete", timeout=120)
    step.refresh_from_db()
    assert step.status == ErasureStepStatus.DONE
    assert step.details["outcome"] == "retrained_by_owner"
    assert step.details["model_version"] == retrained.pk
    assert step.details["waited_for_owner"]["model_version"] == outside.pk
    assert step.details["waited_for_owner"]["owner"] == owner.username

    request.refresh_from_db()
    text = " ".join(pdf_text((Path(settings.REPORT_ROOT) / request.certificate_path).read_bytes()).split())
    assert "its owner reported a version retrained on the amended snapshot" in text
    assert "outside-cnn v1 was trained outside the ledger" in text
    assert f"until {owner.username} reported v2" in text


@pytest.mark.django_db(transaction=True)
def test_the_owner_retiring_the_version_ends_the_wait(celery_worker):
    carol, ds, snap = _world()
    owner = _owner()
    outside = _trained_outside(snapshot=snap, name="outside-retired", owner=owner)
    # A folder of the run's number that the ledger did not write for this version (left by an
    # earlier run of the same id where ids are reused, or by hand): not this version's file.
    stray = Path(settings.ARTIFACT_ROOT) / f"mlops/runs/{outside.training_run_id}"
    stray.mkdir(parents=True, exist_ok=True)
    (stray / "weights.safetensors").write_bytes(b"someone else's")
    request = _erasure_started()
    execution.erasure_request_execute(request_id=request.pk)

    # Another ML engineer may not retire someone else's model; its owner may.
    stranger = make_role_client("ml_engineer")
    assert stranger.post(f"/api/v1/models/{outside.pk}/retire/", {"reason": "x"}, format="json").status_code == 403
    client = make_role_client("ml_engineer", username=owner.username)
    response = client.post(f"/api/v1/models/{outside.pk}/retire/", {"reason": "erasure: not worth retraining"},
                           format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "retired"

    wait_for(lambda: ErasureRequest.objects.get(pk=request.pk).status == ErasureStatus.COMPLETED,
             what="the erasure to resume and complete", timeout=120)
    step = ErasureStep.objects.get(request=request, name="remediate_lineage_outside-retired")
    assert step.details["outcome"] == "retired_while_waiting"
    # The ledger never held its weights: the certificate must not say it deleted them.
    request.refresh_from_db()
    text = " ".join(pdf_text((Path(settings.REPORT_ROOT) / request.certificate_path).read_bytes()).split())
    assert "the ledger held no copy of its weights" in text
    assert "artifact deleted" not in text and "copy of its file deleted" not in text
    assert (stray / "weights.safetensors").exists()  # nothing of it was the ledger's to delete


@pytest.mark.django_db(transaction=True)
def test_a_retired_external_version_whose_file_the_ledger_held_is_certified_deleted(celery_worker):
    carol, ds, snap = _world()
    owner = _owner()
    outside = _trained_outside(snapshot=snap, name="outside-held", owner=owner, weights=b"state dict bytes")
    held = Path(settings.ARTIFACT_ROOT) / outside.artifact_path
    assert outside.artifact_path and held.exists()
    request = _erasure_started()
    execution.erasure_request_execute(request_id=request.pk)
    client = make_role_client("ml_engineer", username=owner.username)
    assert client.post(f"/api/v1/models/{outside.pk}/retire/", {"reason": "not retrained"},
                       format="json").status_code == 200
    wait_for(lambda: ErasureRequest.objects.get(pk=request.pk).status == ErasureStatus.COMPLETED,
             what="the erasure to resume and complete", timeout=120)
    assert not held.exists()
    request.refresh_from_db()
    text = " ".join(pdf_text((Path(settings.REPORT_ROOT) / request.certificate_path).read_bytes()).split())
    assert "the ledger's copy of its file deleted" in text and "held no copy" not in text


@pytest.mark.django_db(transaction=True)
def test_the_sweep_resumes_a_wait_whose_signal_was_lost(celery_worker):
    carol, ds, snap = _world()
    outside = _trained_outside(snapshot=snap, name="outside-swept", owner=_owner())
    request = _erasure_started()
    execution.erasure_request_execute(request_id=request.pk)
    assert erasure_requests_waiting_resolved() == []
    # Retired with no one told (as if the process died between the commit and the signal).
    ModelVersion.objects.filter(pk=outside.pk).update(status=ModelStatus.RETIRED)
    assert erasure_requests_waiting_resolved() == [request.pk]
