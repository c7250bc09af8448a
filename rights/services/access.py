"""Answering the rights of access (Art. 15) and portability (Art. 20) on the DPO's request.

The identifier is pseudonymised on arrival and never stored, as erasure intake does; an
identifier with no subject is answered "no data held". Every answer, refusal and "no data"
is audited: who asked, which subject reference, the format, never the content.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from governance.services import ServiceConflict, ServiceError, audit_event_record
from rights.access import access_answer, access_answer_no_data
from rights.portability import PORTABILITY_FORMAT, portability_export

ACCESS_FORMATS = ("json", "pdf")
PORTABILITY_FORMATS = ("json", "csv")


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ServiceError("The data subject's identifier is required (e.g. their e-mail or customer number).",
                           field="subject")
    if len(value) > 500:
        raise ServiceError("An identifier is at most 500 characters.", field="subject")
    return value


def _format(value: Any, allowed: tuple[str, ...]) -> str:
    if value in (None, ""):
        return allowed[0]
    if value not in allowed:
        raise ServiceError(f"{value!r} is not a format offered here; choose one of: {', '.join(allowed)}.",
                           field="format")
    return value


def _subject(identifier: str):
    from governance.selectors import data_subject_find

    return data_subject_find(identifier=identifier)  # earlier normalisations' subjects too


@transaction.atomic
def subject_access_answer(*, identifier: Any, actor: Any, format: Any = "json") -> dict[str, Any]:  # noqa: A002
    """The Art. 15 answer (rights.access) for the person ``identifier`` names; audited."""
    identifier = _identifier(identifier)
    fmt = _format(format, ACCESS_FORMATS)
    subject = _subject(identifier)
    if subject is None:
        audit_event_record(actor=actor, action="subject_access.answered_no_data", object_type="subject_access",
                           details={"format": fmt, "data_held": False})
        return access_answer_no_data()
    answer = access_answer(subject=subject)
    audit_event_record(
        actor=actor, action="subject_access.answered", object_type="subject_access", subject_ref=subject.reference,
        details={"format": fmt, "data_held": answer["data_held"]},
    )
    return answer


def subject_portability_export(*, identifier: Any, actor: Any, format: Any = "json") -> dict[str, Any]:  # noqa: A002
    """The Art. 20 export (rights.portability) for the person ``identifier`` names; audited.

    A refusal (ServiceConflict naming Art. 20(1)) is audited too, so the refusal is recorded
    although nothing is given: no transaction wraps it, so the event is not rolled back.
    """
    identifier = _identifier(identifier)
    fmt = _format(format, PORTABILITY_FORMATS)
    subject = _subject(identifier)
    if subject is None:
        audit_event_record(actor=actor, action="subject_portability.answered_no_data",
                           object_type="subject_portability", details={"format": fmt, "data_held": False})
        answer = access_answer_no_data()
        answer["format"] = PORTABILITY_FORMAT
        return answer
    try:
        export = portability_export(subject=subject)
    except ServiceConflict as refusal:
        audit_event_record(
            actor=actor, action="subject_portability.refused", object_type="subject_portability",
            subject_ref=subject.reference,
            details={"format": fmt, "article": refusal.extra.get("article", ""),
                     "lawful_bases": refusal.extra.get("lawful_bases", [])},
        )
        raise
    audit_event_record(
        actor=actor, action="subject_portability.exported", object_type="subject_portability",
        subject_ref=subject.reference,
        details={"format": fmt, "datasets": len(export["datasets"]),
                 "records": sum(len(d["records"]) for d in export["datasets"])},
    )
    return export
