"""The daily deadline digest: one e-mail to each DPO listing the erasure requests that are
overdue or due within 7 days, with a link to each, sent by Celery beat
(``rights.send_deadline_digest``).

At most one digest a day: sending is recorded in the audit chain as
``rights.deadline_digest_sent`` (object ``deadline_digest:<date>``) before the e-mails go,
under the chain-head lock, so a second run on the same day (a retry, a manual run, two beat
processes) finds it and sends nothing. A send that fails is recorded as
``rights.deadline_digest_failed``, which lets the next run that day try again.

The e-mails name requests by number, status and deadline only: never a person, an
identifier or a pseudonym.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage, get_connection
from django.db import transaction
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from governance import display
from governance.models import AuditEvent
from governance.roles import DPO
from governance.services import SYSTEM_ACTOR, audit_event_record
from rights import selectors
from rights.admin_filters import DUE_SOON, DUE_SOON_DAYS, OVERDUE
from rights.deadlines import days_left
from rights.models import ErasureChannel, ErasureRequest, ErasureStatus

logger = logging.getLogger(__name__)

SENT = "rights.deadline_digest_sent"
FAILED = "rights.deadline_digest_failed"
OBJECT_TYPE = "deadline_digest"


@dataclass(frozen=True)
class DeadlineDigest:
    """The requests one day's digest lists, each list by deadline (earliest first)."""

    on: date
    overdue: list[ErasureRequest]
    due_soon: list[ErasureRequest]

    @property
    def is_empty(self) -> bool:
        return not (self.overdue or self.due_soon)


def deadline_digest_requests(*, on: date | None = None) -> DeadlineDigest:
    """Open requests past their (extended) deadline, and those due from ``on`` to 7 days
    later; one query."""
    on = on or selectors.today()
    rows = list(
        selectors.erasure_request_queryset()
        .filter(
            selectors.erasure_requests_overdue_q(on=on)
            | selectors.erasure_requests_due_within_q(days=DUE_SOON_DAYS, on=on)
        )
        .order_by("effective_due", "id")
    )
    return DeadlineDigest(
        on=on,
        overdue=[r for r in rows if r.effective_due < on],
        due_soon=[r for r in rows if r.effective_due >= on],
    )


def deadline_digest_recipients() -> QuerySet:
    """Active users with an e-mail address who act as DPO: members of the ``dpo`` group, and
    superusers (``governance.roles.roles_of`` counts a superuser as a DPO)."""
    return (
        get_user_model()
        .objects.filter(is_active=True)
        .exclude(email="")
        .filter(Q(is_superuser=True) | Q(groups__name=DPO))
        .distinct()
        .order_by("pk")
    )


def deadline_digest_already_sent(*, on: date) -> bool:
    """Whether the digest of ``on`` went out: recorded sent more often than failed."""
    events = AuditEvent.objects.filter(object_type=OBJECT_TYPE, object_id=on.isoformat())
    return events.filter(action=SENT).count() > events.filter(action=FAILED).count()


def _absolute(path: str) -> str:
    # A link in an e-mail needs the host; without SITE_BASE_URL it stays a path on the site.
    return f"{settings.SITE_BASE_URL.rstrip('/')}{path}"


def _request_line(request: ErasureRequest, *, on: date) -> str:
    left = days_left(due=request.effective_due, today=on)
    if left < 0:
        when = f"overdue by {-left} day{'s' if left != -1 else ''}"
    elif left == 0:
        when = "due today"
    else:
        when = f"{left} day{'s' if left != 1 else ''} left"
    extended = " (extended)" if request.extended_due_at else ""
    url = _absolute(reverse("admin:rights_erasurerequest_change", args=[request.pk]))
    return (
        f"  - Request {request.pk}: due {display.moment(request.effective_due)}{extended}, {when}"
        f" — status {display.label(ErasureStatus, request.status)}, arrived "
        f"{display.moment(timezone.localdate(request.received_at))} ({display.label(ErasureChannel, request.channel)})"
        f"\n    {url}"
    )


def _list_link(deadline: str) -> str:
    return _absolute(f"{reverse('admin:rights_erasurerequest_changelist')}?{urlencode({'deadline': deadline})}")


def deadline_digest_subject(digest: DeadlineDigest) -> str:
    parts = []
    if digest.overdue:
        parts.append(f"{len(digest.overdue)} overdue")
    if digest.due_soon:
        parts.append(f"{len(digest.due_soon)} due within {DUE_SOON_DAYS} days")
    return f"Privacy Ledger: erasure requests {' and '.join(parts)} ({display.moment(digest.on)})"


def deadline_digest_body(digest: DeadlineDigest) -> str:
    """The digest's text: the overdue requests, then those due soon, each with its link."""
    lines = [
        f"Erasure requests that need an answer, as of {display.moment(digest.on)}.",
        "The deadline is the last day in time (GDPR Art. 12(3)); an extended deadline is marked.",
        "",
    ]
    for title, rows, deadline in (
        ("Overdue", digest.overdue, OVERDUE),
        (f"Due within {DUE_SOON_DAYS} days", digest.due_soon, DUE_SOON),
    ):
        lines.append(f"{title} ({len(rows)}):")
        if rows:
            lines.extend(_request_line(r, on=digest.on) for r in rows)
            lines.append(f"  All of them: {_list_link(deadline)}")
        else:
            lines.append("  none")
        lines.append("")
    lines.append("You receive this as a DPO of Privacy Ledger; it is sent once a day while requests are due.")
    return "\n".join(lines)


def deadline_digest_send(*, now: datetime | None = None) -> int:
    """Send the day's digest to every DPO with an e-mail address, once a day; returns the
    number of e-mails sent (0: nothing due, no DPO with an address, or already sent today).

    One e-mail per DPO, so no DPO sees the others' addresses.
    """
    now = now or timezone.now()
    on = timezone.localdate(now)
    digest = deadline_digest_requests(on=on)
    if digest.is_empty:
        return 0
    recipients = [u.email for u in deadline_digest_recipients()]
    if not recipients:
        logger.warning("deadline digest of %s not sent: no active DPO user has an e-mail address", on)
        return 0
    details = {
        "date": on.isoformat(),
        "recipients": len(recipients),
        "overdue": [r.pk for r in digest.overdue],
        "due_soon": [r.pk for r in digest.due_soon],
    }
    with transaction.atomic():
        if deadline_digest_already_sent(on=on):
            return 0
        # Recording takes the chain-head lock until the commit: a concurrent run waits here,
        # then finds this event and sends nothing.
        event = audit_event_record(
            actor=SYSTEM_ACTOR, action=SENT, object_type=OBJECT_TYPE, object_id=on.isoformat(), details=details
        )
        earlier = AuditEvent.objects.filter(object_type=OBJECT_TYPE, object_id=on.isoformat()).exclude(pk=event.pk)
        if earlier.filter(action=SENT).count() > earlier.filter(action=FAILED).count():
            transaction.set_rollback(True)
            return 0
    subject, body = deadline_digest_subject(digest), deadline_digest_body(digest)
    messages = [EmailMessage(subject=subject, body=body, to=[address]) for address in recipients]
    try:
        sent = get_connection().send_messages(messages) or 0
    except Exception as exc:
        audit_event_record(
            actor=SYSTEM_ACTOR, action=FAILED, object_type=OBJECT_TYPE, object_id=on.isoformat(),
            details={"date": on.isoformat(), "error": f"{type(exc).__name__}: {exc}"[:500]},
        )
        raise
    return sent
