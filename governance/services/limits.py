"""Processing limits on a person: restriction (Art. 18) and objection (Art. 21).

Both are append-only: a restriction ends by a lifting recorded beside it (who, why, when,
and when the person was told, Art. 18(3)); an objection is answered by compelling
legitimate grounds recorded beside it (Art. 21(1)), never for direct marketing (Art.
21(3)). Their moments are stamped by the server inside the consent ledger's critical
section (governance.consent_clock), so a snapshot that read the ledger at K saw every limit
stamped by then: what a snapshot excluded can be recomputed later and stays the same.

People arrive as external identifiers and are pseudonymised here; a person of whom no data
are held cannot be limited (400 naming ``subject``). An objection announces itself after
the commit (``governance.signals.processing_objected``) so the rights app can open an Art.
17(1)(c) erasure request, as it does for a withdrawal.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from governance.consent_clock import consent_recorded_at_stamp
from governance.services.audit import audit_event_record
from governance.services.errors import ServiceConflict, ServiceError, _actor_name, moment_for_field

MAX_TEXT = 5000


def _text(value: Any, *, field: str, required: bool, what: str) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ServiceError("Expected a string.", field=field)
    value = value.strip()
    if required and not value:
        raise ServiceError(f"{what} is required.", field=field)
    if len(value) > MAX_TEXT:
        raise ServiceError(f"At most {MAX_TEXT} characters.", field=field)
    return value


def _subject_locked(identifier: Any):
    """The person an identifier names, their row locked for the rest of the transaction
    (two limits recorded for one person at once queue here), or a 400 naming ``subject``."""
    from governance.models import DataSubject
    from governance.pseudonymisation import IdentifierError
    from governance.selectors import data_subject_find

    if isinstance(identifier, DataSubject):
        # A rights request (rights.services.requests) holds the subject, never the identifier.
        return DataSubject.objects.select_for_update().get(pk=identifier.pk)
    if not isinstance(identifier, str) or not identifier.strip():
        raise ServiceError("The person's external identifier is required.", field="subject")
    try:
        subject = data_subject_find(identifier=identifier)
    except IdentifierError:
        raise ServiceError(
            "Has no visible character; invisible characters are removed before pseudonymisation.", field="subject"
        ) from None
    if subject is None:
        raise ServiceError("No data are held about this person: there is nothing to limit.", field="subject")
    return DataSubject.objects.select_for_update().get(pk=subject.pk)


# --- Restriction (Art. 18) ------------------------------------------------------------


@transaction.atomic
def processing_restriction_create(*, subject: Any, ground: Any, justification: Any, actor: Any = None):
    """Restrict a person's processing to storage (Art. 18(1)) from now on.

    ``subject`` is the external identifier; ``ground`` one of RestrictionGround (18(1)(a)-(d)).
    Refuses (409, Art. 18) a person already restricted. Until it is lifted the person is
    left out of new snapshots (reason ``restricted``) and training refuses snapshots that
    hold them.
    """
    from governance.models import ProcessingRestriction, RestrictionGround
    from governance.selectors import restrictions_in_force

    if ground not in RestrictionGround.values:
        raise ServiceError(
            f"Must be one of {', '.join(RestrictionGround.values)} (Art. 18(1)(a)-(d)).", field="ground"
        )
    justification = _text(justification, field="justification", required=True, what="Why the processing is restricted")
    person = _subject_locked(subject)
    restricted_at = consent_recorded_at_stamp()
    current = restrictions_in_force(at=restricted_at).filter(subject=person).order_by("restricted_at").first()
    if current is not None:
        raise ServiceConflict(
            f"This person's processing is already restricted (Art. 18) by restriction {current.pk} since "
            f"{current.restricted_at.isoformat()}; lift it before recording another.",
            field="subject", restriction=current.pk,
        )
    restriction = ProcessingRestriction.objects.create(
        subject=person, ground=ground, justification=justification, restricted_at=restricted_at,
        restricted_by=_actor_name(actor),
    )
    audit_event_record(
        actor=actor, action="processing.restricted", object_type="processing_restriction", object_id=restriction.pk,
        subject_ref=person.reference, details={"ground": ground, "restricted_at": restricted_at.isoformat()},
    )
    return restriction


@transaction.atomic
def processing_restriction_lift(*, restriction: Any, reason: Any, informed_at: Any, actor: Any = None):
    """Lift a restriction: who, why, when, and when the person was informed, which must be
    before the lifting (Art. 18(3)). Refuses (409) a restriction already lifted."""
    from django.utils import timezone

    from governance.models import ProcessingRestriction, RestrictionLifting

    pk = restriction.pk if isinstance(restriction, ProcessingRestriction) else restriction
    found = ProcessingRestriction.objects.select_for_update().select_related("subject").filter(pk=pk).first()
    if found is None:
        raise ServiceError(f"Restriction {pk} does not exist.", field="restriction")
    reason = _text(reason, field="reason", required=True, what="Why the restriction is lifted")
    if informed_at in (None, ""):
        raise ServiceError(
            "When the person was informed is required: they must be told before the restriction is lifted "
            "(Art. 18(3)).", field="informed_at",
        )
    informed = moment_for_field(informed_at, field="informed_at")
    if RestrictionLifting.objects.filter(restriction=found).exists():
        raise ServiceConflict(f"Restriction {found.pk} was already lifted (Art. 18(3)).", field="restriction")
    lifted_at = consent_recorded_at_stamp()
    if informed > min(lifted_at, timezone.now()):
        raise ServiceError(
            "Is in the future: the person must be informed before the restriction is lifted (Art. 18(3)).",
            field="informed_at",
        )
    if informed < found.restricted_at:
        raise ServiceError(
            f"Precedes the restriction ({found.restricted_at.isoformat()}): the person is informed of this "
            "restriction's lifting (Art. 18(3)).", field="informed_at",
        )
    lifting = RestrictionLifting.objects.create(
        restriction=found, reason=reason, informed_at=informed, lifted_at=lifted_at, lifted_by=_actor_name(actor),
    )
    audit_event_record(
        actor=actor, action="processing.restriction_lifted", object_type="processing_restriction",
        object_id=found.pk, subject_ref=found.subject.reference,
        details={"informed_at": informed.isoformat(), "lifted_at": lifted_at.isoformat()},
    )
    return lifting


# --- Objection (Art. 21) --------------------------------------------------------------


def _objection_refusal(purpose, bases: dict[str, list[str]]) -> str:
    from governance.models import LawfulBasis

    labels = dict(LawfulBasis.choices)
    if not bases:
        return f"No processing activity covers {purpose.code!r}: nothing is processed for it to object to."
    if LawfulBasis.CONSENT in bases:
        return (
            f"{purpose.code!r} is processed on consent (Art. 6(1)(a)) by {', '.join(bases[LawfulBasis.CONSENT])}: "
            "the person withdraws consent (Art. 7(3)) instead of objecting (Art. 21 covers Art. 6(1)(e) and (f))."
        )
    named = "; ".join(f"{labels.get(b, b)}: {', '.join(names)}" for b, names in sorted(bases.items()))
    return (
        f"An objection (Art. 21(1)) stops processing under Art. 6(1)(e) or (f) only; {purpose.code!r} is processed "
        f"under {named}."
    )


@transaction.atomic
def processing_objection_create(*, subject: Any, purpose: Any, grounds: Any = "", actor: Any = None):
    """Record a person's objection (Art. 21) to processing for ``purpose`` (and what it covers).

    Allowed where a processing activity covering the purpose rests on Art. 6(1)(e) or (f),
    or for direct marketing (a purpose under ``marketing``) on any basis but consent; refused
    (400 naming ``purpose``) otherwise, pointing a consent-based purpose at withdrawal (Art.
    7(3)). Grounds relating to the person's situation are required except against direct
    marketing (Art. 21(2)). Refuses (409, Art. 21) an objection already in force for the
    same purpose. From now on the person is left out of snapshots for the purpose (reason
    ``objected``) until the DPO records compelling grounds (never for direct marketing).
    """
    from governance.models import ProcessingActivity, ProcessingObjection, Purpose, purpose_code_is_direct_marketing
    from governance.selectors import objection_applies, objections_in_force, purpose_lawful_bases
    from governance.signals import processing_objected, send_on_commit

    if not isinstance(purpose, Purpose):
        if not isinstance(purpose, str) or not purpose:
            raise ServiceError("A purpose code is required.", field="purpose")
        found = Purpose.objects.filter(code=purpose).first()
        if found is None:
            raise ServiceError(f"Unknown purpose code {purpose!r}.", field="purpose")
        purpose = found
    marketing = purpose_code_is_direct_marketing(purpose.code)
    bases = purpose_lawful_bases(purpose=purpose)
    if not any(objection_applies(lawful_basis=b, purpose_code=purpose.code) for b in bases):
        raise ServiceError(_objection_refusal(purpose, bases), field="purpose")
    grounds = _text(
        grounds, field="grounds", required=not marketing,
        what="The person's grounds relating to their particular situation (Art. 21(1))",
    )
    person = _subject_locked(subject)
    objected_at = consent_recorded_at_stamp()
    current = objections_in_force(at=objected_at).filter(subject=person, purpose=purpose).first()
    if current is not None:
        raise ServiceConflict(
            f"This person already objects to {purpose.code!r} (Art. 21) by objection {current.pk} since "
            f"{current.objected_at.isoformat()}.", field="purpose", objection=current.pk,
        )
    objection = ProcessingObjection.objects.create(
        subject=person, purpose=purpose, grounds=grounds, direct_marketing=marketing, objected_at=objected_at,
        recorded_by=_actor_name(actor),
    )
    activities = sorted(
        name for name, basis in ProcessingActivity.objects.filter(purposes__code__in=purpose.ancestor_codes())
        .values_list("name", "lawful_basis").distinct()
        if objection_applies(lawful_basis=basis, purpose_code=purpose.code)
    )
    audit_event_record(
        actor=actor, action="processing.objected", object_type="processing_objection", object_id=objection.pk,
        subject_ref=person.reference,
        details={"purpose": purpose.code, "direct_marketing": marketing, "objected_at": objected_at.isoformat(),
                 "activities": activities},
    )
    # The rights app opens an Art. 17(1)(c) erasure request where the activities erase when
    # processing stops; after the commit, so an objection never fails because of it.
    send_on_commit(
        processing_objected, subject_id=person.pk, purpose_code=purpose.code, objection_id=objection.pk, actor=actor,
    )
    return objection


@transaction.atomic
def processing_objection_compelling_grounds_record(*, objection: Any, justification: Any, actor: Any = None):
    """Record the controller's compelling legitimate grounds that override an objection
    (Art. 21(1)); from now on the objection no longer excludes the person. Refused (409)
    for direct marketing, where the objection is absolute (Art. 21(3)), and when grounds
    were already recorded."""
    from governance.models import CompellingGrounds, ProcessingObjection

    pk = objection.pk if isinstance(objection, ProcessingObjection) else objection
    found = ProcessingObjection.objects.select_for_update().select_related("subject", "purpose").filter(pk=pk).first()
    if found is None:
        raise ServiceError(f"Objection {pk} does not exist.", field="objection")
    if found.direct_marketing:
        raise ServiceConflict(
            f"Objection {found.pk} is to direct marketing ({found.purpose.code!r}): it is absolute, no grounds "
            "override it (Art. 21(3)).", field="objection",
        )
    justification = _text(
        justification, field="justification", required=True,
        what="The compelling legitimate grounds that override the person's interests (Art. 21(1))",
    )
    if CompellingGrounds.objects.filter(objection=found).exists():
        raise ServiceConflict(
            f"Compelling grounds were already recorded for objection {found.pk} (Art. 21(1)).", field="objection"
        )
    recorded_at = consent_recorded_at_stamp()
    grounds = CompellingGrounds.objects.create(
        objection=found, justification=justification, recorded_at=recorded_at, recorded_by=_actor_name(actor),
    )
    audit_event_record(
        actor=actor, action="processing.objection_overridden", object_type="processing_objection",
        object_id=found.pk, subject_ref=found.subject.reference,
        details={"purpose": found.purpose.code, "recorded_at": recorded_at.isoformat()},
    )
    return grounds
