"""The other rights (Art. 15, 16, 18, 20, 21): one request of each type through the shared workflow.

Runs after the reports: the rectification marks the DP model trained on the old value stale,
which the DPIA and lineage reports written before should not show. Uses the people, dataset
and purpose of the earlier steps (``ctx.shared``); without them it has nothing to act on.
Writes the access answer (JSON and PDF) and the portability export (JSON and a ZIP of CSV)
to var/reports/rights/.
"""

from __future__ import annotations

from django.utils import timezone

from governance.demo_context import DemoContext
from governance.pseudonymisation import pseudonymise
from governance.services import ServiceError
from rights import services
from rights.models import RightsRequest, RightsRequestType
from rights.services.answers import answer_files


def _people_with_records(ctx: DemoContext) -> list[tuple[str, int]]:
    """(identifier, subject id) of the earlier steps' people who still have records."""
    from governance.models import DataSubject
    from provenance.models import DataRecord

    identifiers = ctx.shared.get("subject_identifiers") or []
    by_pseudonym = {pseudonymise(i): i for i in identifiers}
    held = set(
        DataRecord.objects.filter(dataset=ctx.shared["dataset"], superseded_at__isnull=True)
        .values_list("subject_id", flat=True)
    )
    people = DataSubject.objects.filter(pseudonym__in=by_pseudonym, pk__in=held).order_by("pk")
    return [(by_pseudonym[p.pseudonym], p.pk) for p in people]


def _executed(ctx: DemoContext, *, type_: str, identifier: str, **fields) -> RightsRequest:
    dpo = ctx.shared["user_dpo"]
    request = services.rights_request_receive(type=type_, identifier=identifier, channel="email", actor=dpo, **fields)
    services.rights_request_verify(rights_request=request, method="signed letter", actor=dpo)
    services.rights_request_execute(rights_request=request, actor=dpo)
    return RightsRequest.objects.get(pk=request.pk)


def run(ctx: DemoContext) -> None:
    from mlops.models import ModelStatus, ModelVersion
    from provenance.models import DataRecord
    from provenance.services import snapshot_create

    if "dataset" not in ctx.shared or "user_dpo" not in ctx.shared:
        ctx.say("no dataset from the earlier steps: nothing to act on")
        return
    people = _people_with_records(ctx)
    if len(people) < 3:
        ctx.say("fewer than three people with records left: nothing to act on")
        return
    (first, first_id), (second, second_id), (third, _third_id) = people[:3]
    dataset, purpose, dpo = ctx.shared["dataset"], ctx.shared["purpose"], ctx.shared["user_dpo"]

    access = _executed(ctx, type_=RightsRequestType.ACCESS, identifier=first)
    files = answer_files(access)
    ctx.fact("access (Art. 15)", f"request {access.pk} {access.status}: answer kept until "
                                 f"{access.answer_expires_at:%Y-%m-%d}" if access.answer_expires_at else access.status)
    for fmt, path in files.items():
        ctx.artifact(f"access answer ({fmt.upper()})", path)

    portability = _executed(ctx, type_=RightsRequestType.PORTABILITY, identifier=first)
    ctx.fact("portability (Art. 20)", f"request {portability.pk} {portability.status}")
    for fmt, path in answer_files(portability).items():
        ctx.artifact(f"portability export ({'ZIP of CSV' if fmt == 'csv' else fmt.upper()})", path)

    record = DataRecord.objects.filter(subject_id=first_id, dataset=dataset, superseded_at__isnull=True).order_by("pk").first()
    feature = dataset.schema["features"][0]["name"]
    corrected = round(float(record.features[feature]) + 1.0, 4)
    rectification = _executed(
        ctx, type_=RightsRequestType.RECTIFICATION, identifier=first, dataset=dataset.pk,
        justification="The person showed the value was recorded wrongly.",
        corrections=[{"record": record.pk, "values": {feature: corrected}}],
    )
    stale = ModelVersion.objects.filter(status=ModelStatus.STALE).count()
    ctx.fact("rectification (Art. 16)", f"request {rectification.pk} {rectification.status}: {feature} of record "
                                        f"{record.pk} corrected; model versions now stale (trained on the old value): {stale}")
    # Art. 19: the recipients the record of processing names are listed to be told; the DPO
    # records having told them (the ledger sends nothing itself).
    told = []
    for notification in rectification.recipient_notifications.filter(notified_at__isnull=True):
        services.rights_request_recipient_notified(rights_request=rectification, recipient=notification.recipient,
                                                   method="e-mail to the team's privacy contact", actor=dpo)
        told.append(notification.recipient)
    ctx.fact("recipients told (Art. 19)", ", ".join(told) or "none named")

    restriction = _executed(
        ctx, type_=RightsRequestType.RESTRICTION, identifier=second, restriction_ground="18_1_a",
        justification="The person contests the accuracy of their records while we verify them.",
    )
    held_back = snapshot_create(dataset=dataset, purpose=purpose, requested_by=dpo)
    services.rights_request_restriction_lift(
        rights_request=restriction, informed_at=timezone.now(),
        reason="Accuracy verified; the person was told before the lifting (Art. 18(3)).", actor=dpo,
    )
    back = snapshot_create(dataset=dataset, purpose=purpose, requested_by=dpo)
    records_of_second = DataRecord.objects.filter(subject_id=second_id, dataset=dataset, superseded_at__isnull=True).count()
    ctx.fact("restriction (Art. 18)", f"request {restriction.pk}: snapshot #{held_back.pk} left out "
                                      f"{held_back.excluded_counts.get('restricted', 0)} record(s) as restricted; lifted, "
                                      f"snapshot #{back.pk} includes the person's {records_of_second} again")

    # Art. 21 covers processing on a public task or legitimate interests, not consent (the
    # demo's clinical purpose): first the refusal a DPO sees, then a real objection to a
    # service-quality analysis the hospital runs on its legitimate interests.
    try:
        services.rights_request_receive(type=RightsRequestType.OBJECTION, identifier=third, channel="email",
                                        purpose=purpose.code, justification="I object.", actor=dpo)
    except ServiceError as refusal:
        ctx.fact("objection to a consent purpose (refused)", str(refusal).split(";")[0])
    quality, monitoring = _legitimate_interests_processing(ctx, people=[i for i, _ in people], dpo=dpo)
    objection = _executed(ctx, type_=RightsRequestType.OBJECTION, identifier=third, purpose=quality.code,
                          justification="I do not want my visits analysed; I am a member of staff as well.")
    after = snapshot_create(dataset=monitoring, purpose=quality, requested_by=dpo)
    ctx.fact("objection (Art. 21)", f"request {objection.pk} {objection.status}: {quality.code} rests on Art. 6(1)(f); "
                                    f"snapshot #{after.pk} left out {after.excluded_counts.get('objected', 0)} record(s) "
                                    "as objected, until compelling grounds are recorded (Art. 21(1))")


def _legitimate_interests_processing(ctx: DemoContext, *, people: list[str], dpo):
    """A purpose on Art. 6(1)(f), its Art. 30 record and a small dataset of the same people."""
    from datetime import timedelta

    from governance import services as governance
    from governance.models import DataCategory, DataSubjectCategory, Purpose
    from provenance import services as provenance

    stamp = timezone.now().strftime("%Y%m%d%H%M%S")
    code = "operations.service_quality"
    quality = Purpose.objects.filter(code=code).first()
    if quality is None:
        if not Purpose.objects.filter(code="operations").exists():
            governance.purpose_create(code="operations", name="Running the hospital's services", actor=dpo)
        quality = governance.purpose_create(code=code, name="Service-quality analysis of outpatient visits", actor=dpo)
    activity = governance.processing_activity_create(
        name=f"Outpatient service-quality analysis (demo {stamp})", purposes=[quality],
        data_subject_categories=list(DataSubjectCategory.objects.filter(code="patient")),
        retention={c: timedelta(days=365) for c in DataCategory.objects.filter(code="demographic")},
        controller_name="Example Hospital NHS Trust", controller_contact="privacy@hospital.example",
        dpo_contact="dpo@hospital.example", recipients=[], lawful_basis="legitimate_interests",
        legitimate_interests_assessment="Waiting times are analysed to staff clinics; balanced against the "
                                        "patients' interests in the LIA of March 2026.",
        security_measures="Pseudonymisation on arrival (HMAC-SHA-256), role-based access.", actor=dpo,
    )
    schema = {"features": [{"name": "wait_minutes", "type": "float", "min": 0, "max": 240}],
              "label": {"name": "seen_on_time", "type": "bool"}}
    dataset = provenance.dataset_create(
        name=f"outpatient-visits-{stamp}", owner="Operations", processing_activity=activity, schema=schema,
        source_system="outpatient booking system (demo)", description="Waiting time per visit, synthetic.", actor=dpo,
    )
    provenance.dataset_records_ingest(dataset=dataset, actor=dpo, rows=[
        {"subject": identifier, "features": {"wait_minutes": 15.0 + 7 * n}, "label": n % 3 != 0}
        for n, identifier in enumerate(people)
    ])
    return quality, dataset
