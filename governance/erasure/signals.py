"""Post-ingest hook: consent withdrawals under an activity that erases on withdrawal open
Art. 17(1)(b) requests.

The consent ingest notes such withdrawals in its audit event
(``withdrawals_under_erasure_on_withdrawal``); after that transaction commits, the
idempotent sweep opens the requests. Running after the commit keeps the ingest's own
transaction (and the audit chain's head lock) short, and a failure here is logged, never
undoing the ingest: the next sweep picks the withdrawals up again.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_save


def _open_requests() -> None:
    from governance.erasure.services import erasure_requests_open_for_withdrawals_sweep

    erasure_requests_open_for_withdrawals_sweep(actor="consent-withdrawal-hook")


def _audit_event_saved(sender, instance, created: bool, **kwargs) -> None:
    if not created or kwargs.get("raw") or instance.action != "consent_event.ingested":
        return
    if (instance.details or {}).get("withdrawals_under_erasure_on_withdrawal", 0) > 0:
        transaction.on_commit(_open_requests, robust=True)


post_save.connect(
    _audit_event_saved, sender="governance.AuditEvent", dispatch_uid="erasure_open_on_consent_withdrawal"
)
