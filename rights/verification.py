"""Before a certificate is issued, every claim it will make is checked against the database.

The checks recompute from the rows that exist now, never from the plan or the step log:
the person has no subject row, consent event, record, snapshot membership or SISA
placement left; every snapshot the erasure amended has the membership its amendments
account for and the Merkle root its last amendment recorded; no live model version (of
any name) was trained on data read before this erasure's amendments, unless the DPO kept
it on its DP guarantee for this request; every model name has at most one live version;
and the version the certificate names for each lineage exists with its file intact.
A failing check withholds the certificate and leaves the request in progress.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Max, Sum

from rights.models import ErasureRequest, ErasureStep, RemediationAction
from rights.selectors import LIVE_MODEL_STATUSES


def _check(claim: str, ok: bool, detail: str = "") -> dict[str, Any]:
    return {"claim": claim, "ok": bool(ok), "detail": detail if not ok else ""}


# A run that has just been claimed records what it read a moment later (it counts the
# snapshot's amendments, then loads the rows); wait that long before calling it stale.
READ_RECORD_WAIT_SECONDS = 15.0


def _runs_reading_before(*, keys: list[dict[str, int]], snapshot_ids: list[int]) -> list[dict]:
    """Runs still training on one of the snapshots on data read before its amendment."""
    import time

    from mlops.models import RunStatus, TrainingRun
    from mlops.selectors import read_before

    if not snapshot_ids:
        return []
    running = TrainingRun.objects.filter(snapshot_id__in=snapshot_ids, status=RunStatus.RUNNING)
    deadline = time.monotonic() + READ_RECORD_WAIT_SECONDS
    while running.filter(trained_on_amendment__isnull=True).exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    return list(running.filter(read_before(amendments=keys)).values("pk", "snapshot_id", "trained_on_amendment"))


def erasure_claims_verify(*, request: ErasureRequest, plan: dict) -> list[dict[str, Any]]:
    """The certificate's claims, each with whether the database bears it out."""
    from governance.models import ConsentEvent, DataSubject
    from mlops import artifacts
    from mlops.models import ModelVersion, SisaAssignment
    from mlops.selectors import live_versions_trained_before
    from provenance.models import DataRecord, Snapshot, SnapshotAmendment, SnapshotMembership
    from provenance.services import snapshot_merkle_root

    subject_id = plan["subject_id"]
    checks = [
        _check("subject row deleted", not DataSubject.objects.filter(pk=subject_id).exists()),
        _check("consent events deleted", not ConsentEvent.objects.filter(subject_id=subject_id).exists()),
        _check("records deleted", not DataRecord.objects.filter(subject_id=subject_id).exists()),
        _check("snapshot memberships removed", not SnapshotMembership.objects.filter(subject_id=subject_id).exists()),
        _check("SISA placements removed", not SisaAssignment.objects.filter(subject_id=subject_id).exists()),
    ]

    mine = list(SnapshotAmendment.objects.filter(erasure_request_id=request.pk).order_by("snapshot_id"))
    for amendment in mine:
        snapshot = Snapshot.objects.get(pk=amendment.snapshot_id)
        totals = SnapshotAmendment.objects.filter(snapshot=snapshot).aggregate(removed=Sum("records_removed"), last=Max("sequence"))
        members = SnapshotMembership.objects.filter(snapshot=snapshot).count()
        expected = snapshot.included_count - (totals["removed"] or 0)
        checks.append(_check(
            f"snapshot {snapshot.pk}: membership accounted for", members == expected,
            f"{members} members, {snapshot.included_count} included less {totals['removed']} removed = {expected}",
        ))
        last = SnapshotAmendment.objects.get(snapshot=snapshot, sequence=totals["last"])
        root = snapshot_merkle_root(snapshot_id=snapshot.pk)
        checks.append(_check(
            f"snapshot {snapshot.pk}: Merkle root matches its last amendment", root == last.new_root,
            f"recomputed {root[:16]}…, amendment {last.sequence} recorded {last.new_root[:16]}…",
        ))

    steps = {s.name: s.details for s in ErasureStep.objects.filter(request=request)}
    kept = {
        d["name"] for name, d in steps.items()
        if name.startswith("remediate_lineage_") and d.get("action") == RemediationAction.RELY_ON_DP
        and str(d.get("outcome", "")).startswith("kept_on_dp")
    }
    keys = [{"snapshot": a.snapshot_id, "sequence": a.sequence} for a in mine]
    holding = [v for v in live_versions_trained_before(amendments=keys) if v["name"] not in kept]
    checks.append(_check(
        "no live model version was trained on the person", not holding,
        ", ".join(f"{v['name']} v{v['version']} ({v['status']})" for v in holding[:5]),
    ))
    snapshot_ids = [a.snapshot_id for a in mine]
    stale_running = _runs_reading_before(keys=keys, snapshot_ids=snapshot_ids)
    checks.append(_check(
        "no training run still trains on data read before the erasure", not stale_running,
        ", ".join(f"run {r['pk']}" for r in stale_running[:5]),
    ))

    names = sorted({m["name"] for m in plan["model_versions"]} | {d.get("name") for n, d in steps.items()
                                                                  if n.startswith("remediate_lineage_") and d.get("name")})
    if names:
        doubles = list(
            ModelVersion.objects.filter(name__in=names, status__in=LIVE_MODEL_STATUSES).values("name")
            .annotate(n=Count("id")).filter(n__gt=1).values_list("name", flat=True)
        )
        checks.append(_check("one live version per model name", not doubles, ", ".join(doubles)))
    for name, details in sorted(steps.items()):
        if not name.startswith("remediate_lineage_") or not details.get("model_version"):
            continue
        version = ModelVersion.objects.filter(pk=details["model_version"]).first()
        label = f"{details.get('name')}: version {details.get('version')}"
        if version is None:
            checks.append(_check(f"{label} exists", False, "no such model version"))
            continue
        if version.external and not version.artifact_path:
            # Trained outside the ledger and reported without its file: the ledger holds only
            # the SHA-256 its owner reported, so that is what can be checked.
            checks.append(_check(f"{label}: trained outside the ledger, reported SHA-256 on record",
                                 len(version.artifact_sha256 or "") == 64, "no SHA-256 reported"))
        elif version.status in LIVE_MODEL_STATUSES and details.get("outcome") != "retired":
            try:
                intact = artifacts.sha256_of(artifacts.absolute(version.artifact_path)) == version.artifact_sha256
            except (OSError, ValueError):
                intact = False
            checks.append(_check(f"{label}: artifact present and unaltered", intact, "file missing or hash differs"))
    return checks
