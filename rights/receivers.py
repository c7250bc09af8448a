"""How the rights app reacts to what the lower layers announce (their named signals)."""

from __future__ import annotations

from django.dispatch import receiver

from governance.signals import consent_withdrawn, processing_objected


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
