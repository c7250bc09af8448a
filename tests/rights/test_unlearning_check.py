"""An erasure's remediated models are checked for remembering the person (issue 15, item 5):
scored while the worker still holds the records in memory, printed on the certificate,
and the unlearned version gets its own privacy audits."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.utils import timezone

from governance.models import ConsentEvent
from mlops.models import AuditJobStatus, ModelVersion, UnlearningCheck
from rights import execution
from rights.models import ErasureRequest, ErasureStep
from tests.governance.reports_helpers import pdf_text
from tests.mlops.helpers import wait_for, wait_for_run
from tests.rights import helpers as h
from tests.rights.test_erasure_execution import _start, _verified_request

DANA = "dana@example.org"


@pytest.mark.parametrize("sisa", [{"shards": 3, "slices": 2}, None], ids=["sisa-unlearning", "retraining"])
def test_the_new_version_is_checked_for_the_person_audited_and_the_certificate_says_so(celery_worker, sisa):
    from mlops import services as mlops_services

    dana = h.subject_for(DANA)
    act = h.activity()
    ds = h.people_dataset(act=act, people=[dana, *h.crowd(90)], records_per_person=2, seed=4)
    ConsentEvent.objects.create(
        event_id=f"dana-given-{sisa is None}", subject=dana, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    # A small batch: the person split hashes subject ids, which depend on the tests run before,
    # and a SISA shard can get as few as a dozen training records (CI found 12 under 16).
    run = mlops_services.training_run_queue(
        snapshot=h.snapshot_of(ds), name="checked", epochs=2, batch_size=4, noise_multiplier=1.0, seed=3,
        model_spec={"hidden_sizes": [8]}, validation_split=0.2, holdout_fraction=0.3, sisa=sisa,
    )
    assert wait_for_run(run.pk).status == "succeeded"
    before = ModelVersion.objects.get(training_run_id=run.pk)

    request = _verified_request(DANA)
    _start(request)
    execution.erasure_request_execute(request_id=request.pk)
    request = ErasureRequest.objects.get(pk=request.pk)
    assert request.status == "completed"

    after = ModelVersion.objects.get(name="checked", status="active")
    assert after.pk != before.pk
    check = UnlearningCheck.objects.get(model_version=after, erasure_request_id=request.pk)
    assert check.previous_version_id == before.pk
    assert check.n_records == 2 and check.passed, check.summary_text()
    assert 0.0 <= check.new_score <= check.threshold <= 1.0
    if sisa:
        assert "shard model(s) of the new version never trained on them" in check.reference
        # Made anew on the new ensemble, not copied from the one it replaced.
        assert after.metrics["val_accuracy"] is not None
    else:
        assert check.reference == "people the new version never saw (its hold-out)"
    step = ErasureStep.objects.get(request=request, name="remediate_lineage_checked")
    assert step.details["unlearning_check"]["status"] == "passed"
    assert "features" not in str(step.details) and "x0" not in str(step.details)  # figures, never the records

    # The unlearned version is audited like any other.
    wait_for(lambda: not after.audit_jobs.exclude(
        status__in=[AuditJobStatus.COMPLETED, AuditJobStatus.SKIPPED, AuditJobStatus.FAILED]).exists()
        or settings.CELERY_EMBEDDED, what="the new version's audits")
    from tests.mlops.test_privacy_audits import audits_finished

    after = audits_finished(after)
    assert after.audit_jobs.get(kind="loss").status == AuditJobStatus.COMPLETED
    assert after.membership_inference_audits.filter(attack="loss").exists()

    text = pdf_text((settings.REPORT_ROOT / request.certificate_path).read_bytes())
    assert "Models: unlearning check" in text
    assert f"{check.new_score:.2f}" in text and "passed" in text


def test_a_worker_restarted_after_the_deletion_says_the_check_was_not_made(celery_worker, monkeypatch):
    from mlops import services as mlops_services
    from tests.rights.test_erasure_execution import WorkerKilled

    dana = h.subject_for(DANA)
    act = h.activity()
    ds = h.people_dataset(act=act, people=[dana, *h.crowd(60)], seed=5)
    ConsentEvent.objects.create(
        event_id="dana-given-restart", subject=dana, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    run = mlops_services.training_run_queue(
        snapshot=h.snapshot_of(ds), name="restarted", epochs=1, batch_size=4, noise_multiplier=1.0, seed=3,
        model_spec={"hidden_sizes": [8]}, validation_split=0.0, holdout_fraction=0.3,
    )
    assert wait_for_run(run.pk).status == "succeeded"
    request = _verified_request(DANA)
    _start(request)
    real = execution._taint

    def dies_after_deletion(amended):
        raise WorkerKilled()

    monkeypatch.setattr(execution, "_taint", dies_after_deletion)
    with pytest.raises(WorkerKilled):
        execution.erasure_request_execute(request_id=request.pk)
    monkeypatch.setattr(execution, "_taint", real)
    execution.erasure_request_execute(request_id=request.pk)
    step = ErasureStep.objects.get(request=request, name="remediate_lineage_restarted")
    assert step.details["unlearning_check"]["status"] == "not_run"
    assert "kept nowhere" in step.details["unlearning_check"]["reason"]
    assert not UnlearningCheck.objects.filter(erasure_request_id=request.pk).exists()
    text = pdf_text((settings.REPORT_ROOT / ErasureRequest.objects.get(pk=request.pk).certificate_path).read_bytes())
    assert "not made" in text
