"""Provenance: a synthetic dataset, a consent-filtered snapshot and its lineage exports."""

from __future__ import annotations

import json
import math
import random
from datetime import timedelta

from django.utils import timezone

from governance.demo_context import DemoContext
from governance.models import (
    ConsentEvent,
    DataCategory,
    LawfulBasis,
    ProcessingActivity,
    ProcessingActivityDataCategory,
    Purpose,
)
from governance.pseudonymisation import pseudonymise_many
from governance.services import data_subject_ensure_many
from provenance import lineage_exports, merkle, selectors, services

N_SUBJECTS = 250
RECORDS_PER_SUBJECT = 4
N_FEATURES = 10
PURPOSE_CODE = "ml.training.clinical_risk"


def _governance_fallback(ctx: DemoContext, stamp: str) -> tuple[ProcessingActivity, Purpose, list[str]]:
    """Minimal governance rows when the governance step did not provide them."""
    parent = None
    for i, _ in enumerate(PURPOSE_CODE.split(".")):
        code = ".".join(PURPOSE_CODE.split(".")[: i + 1])
        parent, _ = Purpose.objects.get_or_create(code=code, defaults={"name": code, "parent": parent})
    purpose = parent
    activity = ProcessingActivity.objects.create(
        name=f"Clinical risk model training (provenance demo {stamp})", controller_name="Demo Clinic",
        controller_contact="privacy@clinic.example", dpo_contact="dpo@clinic.example",
        security_measures="Pseudonymisation on arrival, encryption at rest, role-based access.",
        lawful_basis=LawfulBasis.CONSENT,
    )
    activity.purposes.set([purpose])
    category, _ = DataCategory.objects.get_or_create(code="health", defaults={"name": "Health data", "special_category": "health"})
    ProcessingActivityDataCategory.objects.create(processing_activity=activity, data_category=category, retention=timedelta(days=365 * 5))
    identifiers = [f"demo-patient-{stamp}-{i:04d}@clinic.example" for i in range(N_SUBJECTS)]
    # Nine in ten gave consent a month ago; one in twenty of those withdrew last week.
    rng = random.Random(ctx.seed)
    subject_ids = data_subject_ensure_many(pseudonyms=pseudonymise_many(identifiers))
    now = timezone.now()
    events = []
    for n, (_, subject_id) in enumerate(subject_ids.items()):
        if rng.random() < 0.9:
            events.append(ConsentEvent(
                event_id=f"demo-{stamp}-{n}-given", subject_id=subject_id, purpose=purpose, action="given",
                occurred_at=now - timedelta(days=30), notice_version="2026-01", notice_sha256="0" * 64, method="web form",
            ))
            if rng.random() < 0.05:
                events.append(ConsentEvent(
                    event_id=f"demo-{stamp}-{n}-withdrawn", subject_id=subject_id, purpose=purpose, action="withdrawn",
                    occurred_at=now - timedelta(days=7), notice_version="2026-01", notice_sha256="0" * 64, method="web form",
                ))
    ConsentEvent.objects.bulk_create(events)
    ctx.say(f"no governance records shared: created activity {activity.name!r} and {len(events)} consent events")
    return activity, purpose, identifiers


def _synthetic_rows(identifiers: list[str], seed: int) -> list[dict]:
    rng = random.Random(seed)
    weights = [rng.uniform(-1.5, 1.5) for _ in range(N_FEATURES)]
    rows = []
    for identifier in identifiers:
        for _ in range(RECORDS_PER_SUBJECT):
            x = [round(rng.gauss(0, 1), 4) for _ in range(N_FEATURES)]
            p = 1 / (1 + math.exp(-sum(w * v for w, v in zip(weights, x, strict=True))))
            rows.append({"subject": identifier, "features": {f"x{i}": v for i, v in enumerate(x)}, "label": rng.random() < p})
    return rows


def run(ctx: DemoContext) -> None:
    stamp = timezone.now().strftime("%Y%m%d%H%M%S%f")
    actor = ctx.shared.get("user_ml_engineer") or "demo"
    activity, purpose = ctx.shared.get("processing_activity"), ctx.shared.get("purpose")
    identifiers = ctx.shared.get("subject_identifiers")
    if activity is None or purpose is None or not identifiers:
        activity, purpose, identifiers = _governance_fallback(ctx, stamp)
    identifiers = list(identifiers)[:N_SUBJECTS]

    schema = {
        "features": [{"name": f"x{i}", "type": "float"} for i in range(N_FEATURES)],
        "label": {"name": "high_risk", "type": "bool"},
    }
    dataset = services.dataset_create(
        name=f"clinical-risk-features-{stamp}", owner="ML platform team", processing_activity=activity,
        schema=schema, source_system="synthetic EHR extract (demo)",
        description=f"{N_FEATURES} standardised numeric features and a binary outcome, synthetic.", actor=actor,
    )
    ingest = services.dataset_records_ingest(dataset=dataset, rows=_synthetic_rows(identifiers, ctx.seed), actor=actor)
    ctx.fact("dataset", f"{dataset.name}: {ingest['records_created']} records of {ingest['subjects']} subjects")

    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose, requested_by=actor if hasattr(actor, "pk") else None)
    excluded = ", ".join(f"{k} {v}" for k, v in snapshot.excluded_counts.items())
    ctx.fact("snapshot", f"#{snapshot.pk} for {purpose.code} ({snapshot.lawful_basis}): {snapshot.included_count} records included; excluded: {excluded}")

    recomputed = merkle.merkle_root(selectors.snapshot_manifest_rows(snapshot=snapshot))
    ctx.fact("Merkle root", f"{snapshot.merkle_root} ({'verified from the manifest' if recomputed == snapshot.merkle_root else 'MISMATCH'})")

    prefix = ctx.report_dir / f"provenance-snapshot-{snapshot.pk}"
    prov_path = prefix.with_suffix(".prov.json")
    prov_path.write_text(lineage_exports.prov_json(lineage_exports.snapshot_prov_document(snapshot=snapshot)))
    ctx.artifact("W3C PROV-JSON lineage", prov_path)
    ol_path = prefix.with_suffix(".openlineage.json")
    events = lineage_exports.openlineage_events_json(lineage_exports.snapshot_openlineage_events(snapshot=snapshot))
    ol_path.write_text(json.dumps(events, indent=2))
    ctx.artifact("OpenLineage run events", ol_path)
    manifest_path = prefix.with_suffix(".manifest.json")
    manifest_path.write_text(json.dumps({
        "snapshot": snapshot.pk, "merkle_root": snapshot.merkle_root,
        "records": [{"record_id": r, "content_hash": h} for r, h in selectors.snapshot_manifest_rows(snapshot=snapshot)],
    }))
    ctx.artifact("snapshot manifest", manifest_path)

    subject = selectors.subject_find(external_id=identifiers[0])
    if subject is not None:
        impact = selectors.subject_impact(subject=subject)
        ctx.say("subject impact (first demo subject): " + ", ".join(f"{k} {v}" for k, v in impact["counts"].items()))
    ctx.shared["dataset"] = dataset
    ctx.shared["snapshot"] = snapshot
