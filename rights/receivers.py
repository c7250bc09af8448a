"""How the rights app reacts to what the lower layers announce (their named signals)."""

from __future__ import annotations

from django.dispatch import receiver

from governance.signals import consent_withdrawn, processing_objected
from mlops.signals import model_version_registered, model_version_status_changed


@receiver(consent_withdrawn, dispatch_uid="rights_open_erasure_on_withdrawal")
def open_erasure_requests_on_withdrawal(sender, *, consent_event_ids: list[str], actor=None, **kwargs) -> int:
    """Art. 17(1)(b): a withdrawal under an activity that erases on withdrawal opens a request.

    Idempotent (one open request per person), so a resent signal or the daily sweep that
    catches up after a failure opens nothing twice.
    """
    from rights.services import erasure_requests_open_for_withdrawals

    return erasure_requests_open_for_withdrawals(consent_event_ids=consent_event_ids, actor=actor)


@receiver(processing_objected, dispatch_uid="rights_open_erasure_on_objection")
def open_erasure_request_on_objection(
    sender, *, objection_id: int, actor=None, **kwargs
):
    """Art. 17(1)(c): an objection that stops an activity which erases when its processing
    stops opens a request, mirroring the withdrawal path. Idempotent (one open request per
    person)."""
    from rights.services import erasure_request_open_for_objection

    return erasure_request_open_for_objection(objection_id=objection_id, actor=actor)


def _resume_waiting_erasures(names: set[str]) -> None:
    from rights.services.dispatch import erasure_requests_resume_for_lineage

    for name in sorted(names):
        erasure_requests_resume_for_lineage(name=name)


@receiver(model_version_registered, dispatch_uid="rights_resume_erasures_on_registration")
def resume_erasures_on_registration(sender, *, name: str, **kwargs) -> None:
    """Art. 17 for models trained outside the ledger: an erasure waiting for a lineage's
    owner resumes when the owner reports a version (it finds whether that version is clean)."""
    _resume_waiting_erasures({name})


@receiver(model_version_status_changed, dispatch_uid="rights_resume_erasures_on_status_change")
def resume_erasures_on_status_change(sender, *, model_version_ids: list[int], status: str, **kwargs) -> None:
    """... and when a version it waits on is retired (by its owner or the DPO) or superseded."""
    from mlops.models import ModelStatus, ModelVersion

    if status not in (ModelStatus.RETIRED, ModelStatus.SUPERSEDED):
        return
    _resume_waiting_erasures(set(ModelVersion.objects.filter(pk__in=model_version_ids).values_list("name", flat=True)))
