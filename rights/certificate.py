"""The erasure certificate (PDF), written with the shared report toolkit.

What an answer to an erasure request should show (ICO; EDPB coordinated action 2025):
dates (received, verified, completed, deadline, extension with reasons), the ground,
per artifact what was done, exemptions with their justification, recipients notified
(Art. 19), what happens to backups, complaint rights where relevant (Art. 12(4)), and
where in the audit chain each event sits, with the chain head's hash. The person is
named only by the random subject reference.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from governance.models import AuditEvent
from governance.services.audit import audit_checkpoint_sign_head
from rights.models import (
    ErasureGround,
    ErasureRequest,
    ErasureStep,
    RefusalGround,
    RemediationAction,
    RightsRefusalGround,
    RightsRequest,
)

OUTCOME_WORDS = {
    "retrained": "retrained from scratch on the amended snapshot",
    "unlearned": "unlearned (SISA: affected shards retrained from the last clean checkpoint)",
    "clean": "already retrained without the person (by this or a concurrent erasure)",
    "retired": "retired; artifact deleted",
    "kept_on_dp": "kept on its differential-privacy guarantee (accepted risk)",
    "kept_on_dp_pending_other_erasures": "kept on its DP guarantee for this request; other erasures remediate it",
    "no_live_version": "no live version; files of old versions deleted",
    # Lineages trained outside the ledger (issue 20): only their owner can retrain them.
    "awaiting_owner": "trained outside the ledger: waiting for its owner to report a version retrained without "
                      "the person, or to retire it",
    "retrained_by_owner": "trained outside the ledger; its owner reported a version retrained on the amended "
                          "snapshot",
    "retired_while_waiting": "trained outside the ledger; retired instead of retrained",
}


def outcome_words(done: dict) -> str:
    """What was done to a lineage, in words; for a version trained outside the ledger and
    retired, whether the ledger deleted a copy of its file or never held one (any copy its
    owner keeps is beyond the ledger's reach, and the certificate must not claim otherwise)."""
    outcome = done.get("outcome", "")
    words = OUTCOME_WORDS.get(outcome, str(outcome).replace("_", " "))
    if outcome == "retired_while_waiting":
        waited = (done.get("waited_for_owner") or {}).get("model_version")
        deleted = any(item.get("model_version") == waited for item in done.get("files_removed") or [])
        words += ("; the ledger's copy of its file deleted" if deleted
                  else "; the ledger held no copy of its weights (any copy is its owner's)")
    return words


def _waited_text(name: str, outcome: str, waited: dict, done: dict) -> str:
    """What happened to a lineage trained outside the ledger, from its step's record."""
    owner = waited.get("owner") or "its owner"
    since = str(waited.get("waiting_since") or "")[:16].replace("T", " ")
    if outcome == "retrained_by_owner":
        end = f"until {owner} reported v{done.get('version')}, trained on the snapshot without the person"
    else:
        end = ("until it was retired. The ledger can delete only copies it holds; a copy of the weights kept by "
               "the owner is theirs to delete")
    return (
        f"{name} v{waited.get('version')} was trained outside the ledger, so the ledger could not retrain it. It "
        f"was marked tainted, which its owner ({owner}) is told by the model's status (GET /api/v1/models/"
        f"{waited.get('model_version')}/status/) and by the webhooks registered for it, and was not to be served. "
        f"This erasure waited from {since} UTC {end}."
    )


def _epsilon_text(epsilon) -> str:
    return "∞ (not private)" if epsilon is None else f"{float(epsilon):.2f}"


def _audit_events_table(request: ErasureRequest | RightsRequest):
    """The request's audit events with their chain positions and hashes."""
    from governance.reports import toolkit as t

    object_type = "erasure_request" if isinstance(request, ErasureRequest) else "rights_request"
    events = AuditEvent.objects.filter(object_type=object_type, object_id=str(request.pk)).order_by("position")
    return t.data_table(
        ["Position", "Event", "Hash"],
        [[position, action, t.hash_cell(digest, label=f"Audit event at position {position}")]
         for position, action, digest in events.values_list("position", "action", "hash")],
    )


def answer_lateness(*, request: ErasureRequest, answered_at) -> int:
    """Days the answer came after the effective deadline (Art. 12(3)); 0 when in time."""
    due = request.extended_due_at or request.due_at
    answered_on = timezone.localtime(answered_at or timezone.now()).date()
    return max(0, (answered_on - due).days)


def _timeliness_text(*, request: ErasureRequest, answered_at) -> str:
    due = request.extended_due_at or request.due_at
    late = answer_lateness(request=request, answered_at=answered_at)
    if late:
        return f"LATE: answered {late} day(s) after the deadline of {due.day} {due:%b %Y} (Art. 12(3))"
    return f"In time (deadline {due.day} {due:%b %Y})"


def _lateness_flows(t, *, request: ErasureRequest, answered_at) -> list:
    """A late answer says so in its own paragraph, not only in the facts: the delay is part of
    the record the person and a supervisory authority read."""
    late = answer_lateness(request=request, answered_at=answered_at)
    if not late:
        return []
    return [t.heading("Answered late"), t.paragraph(
        f"This answer was given {late} day(s) after the deadline set by Art. 12(3) GDPR. The delay is recorded in "
        "the audit chain with the request's events; you may complain about it to a supervisory authority (Art. 77)."
    )]


def certificate_relative_path(request: ErasureRequest) -> str:
    return f"erasure/erasure-certificate-{request.pk}.pdf"


def certificate_write(*, request: ErasureRequest, plan: dict) -> tuple[str, str, dict]:
    """Write the certificate from the request's step log; returns (path relative to REPORT_ROOT,
    SHA-256, the signed checkpoint of the audit chain that covers the request's events)."""
    from governance.reports import toolkit as t

    # Signed before anything of this step is audited: the head then covers every event the
    # certificate lists, all committed by the earlier steps. Whoever holds the certificate can
    # later prove, with the public key alone, that the chain still reaches this position.
    checkpoint = audit_checkpoint_sign_head(reason=f"erasure_certificate:{request.pk}")

    steps = {s.name: s.details for s in ErasureStep.objects.filter(request=request)}
    relative = certificate_relative_path(request)
    flows = t.title_block(
        "Certificate of erasure",
        subtitle="GDPR Art. 17 — right to erasure; Art. 12(3) answer; Art. 19 notification",
        facts=[
            ("Erasure request", request.pk),
            ("Data subject reference", request.subject_ref or "— (no data held)"),
            ("Ground", ErasureGround(request.ground).label),
            ("Regime", request.get_regime_display()),
            ("Received", request.received_at),
            ("Identity verified", f"{t.text(request.verified_at)} ({request.verification_method or 'method not stated'})"),
            ("Due", request.due_at),
            ("Extended to", f"{t.text(request.extended_due_at)} — {request.extension_reasons} (subject informed "
                            f"{t.text(request.subject_informed_of_extension_at)})" if request.extended_due_at else "not extended"),
            ("Execution started", request.execution_started_at),
            ("Completed", request.completed_at),
            ("Deadline met", _timeliness_text(request=request, answered_at=request.completed_at)),
        ],
    )
    flows += _lateness_flows(t, request=request, answered_at=request.completed_at)
    flows.append(t.heading("Datasets: records deleted"))
    deleted = steps.get("delete_records", {}).get("per_dataset", {})
    flows.append(t.data_table(
        ["Dataset", "Name", "Records deleted"],
        [[d["id"], d["name"], deleted.get(str(d["id"]), d["records"])] for d in plan["datasets"]],
        empty="The person had no data records.",
    ))
    flows.append(t.heading("Snapshots: amended"))
    flows.append(t.paragraph(
        "Membership rows of the person were deleted from each snapshot; the original Merkle root stays on the "
        "snapshot as history and the amendment records the root before and after."
    ))
    flows.append(t.data_table(
        ["Snapshot", "Rows removed", "Root before", "Root after"],
        [[a["snapshot"], a["records_removed"],
          t.hash_cell(a["previous_root"], label=f"Merkle root of snapshot #{a['snapshot']} before the erasure"),
          t.hash_cell(a["new_root"], label=f"Merkle root of snapshot #{a['snapshot']} after the erasure")]
         for a in steps.get("amend_snapshots", {}).get("amendments", [])],
        empty="No snapshot held the person.",
    ))
    flows.append(t.heading("Models: remediation"))
    flows.append(t.paragraph(
        "Each model name is a lineage of versions. After the person's data were removed from the snapshots, the "
        "lineage was brought to a version trained on none of them, starting from the version live at that moment; "
        "when other erasures ran at the same time, one retraining may cover all of them."
    ))
    lineages = sorted(
        (d for name, d in steps.items() if name.startswith("remediate_lineage_")), key=lambda d: (d.get("name", ""),),
    )
    latest: dict[str, dict] = {}
    for d in lineages:
        latest[d.get("name", "")] = d  # a later round for the same name supersedes the first
    exemptions = []
    model_rows = []
    for name, done in sorted(latest.items()):
        standing = f"#{done['model_version']} (v{done['version']})" if done.get("model_version") else "—"
        model_rows.append([
            name, outcome_words(done), standing,
            _epsilon_text(done.get("epsilon")) if done.get("model_version") else "—",
        ])
    flows.append(t.data_table(
        ["Model", "What was done", "Version that stands now", "ε of that version"],
        model_rows, empty="No model was trained on the person's data.",
    ))
    for name, done in sorted(latest.items()):
        waited = done.get("waited_for_owner")
        if waited:
            flows.append(t.paragraph(_waited_text(name, done["outcome"], waited, done)))
    flows.append(t.heading("Models: unlearning check"))
    flows.append(t.paragraph(
        "Each version trained or unlearned for this erasure was asked how well it fits the person's records, ranked "
        "among people it never saw: 0.50 means like anyone never seen, near 1.00 that the model remembers them. It "
        "passes when it is no higher than a model that never saw them plus a one-sided 95% margin. The records were "
        "held in the worker's memory for this check only and are stored nowhere."
    ))
    check_rows = []
    for name, done in sorted(latest.items()):
        check = done.get("unlearning_check")
        if not check:
            continue
        if check.get("status") == "not_run":
            check_rows.append([name, "not made", "—", "—", "—", check.get("reason", "")])
            continue
        previous = check.get("previous_score")
        check_rows.append([
            name, check["status"], f"{check['new_score']:.2f}", f"{check['reference_score']:.2f}",
            "—" if previous is None else f"{previous:.2f}",
            f"{check['records']:,} record(s); reference: {check['reference']}; fails above {check['threshold']:.2f}",
        ])
    flows.append(t.data_table(
        ["Model", "Check", "New version", "Reference", "Version replaced", "Basis"],
        check_rows,
        empty="No version was trained or unlearned for this erasure.",
    ))
    for model in plan["model_versions"]:
        if model.get("override"):
            exemptions.append((f"{model['name']} v{model['version']}: {model['override']['action']}",
                               model["override"]["justification"]))
    flows.append(t.data_table(
        ["Model version trained on the person", "Status then", "Artifact SHA-256"],
        [[f"{m['name']} v{m['version']} (#{m['id']})", m["status"],
          t.hash_cell(m["artifact_sha256"], label=f"Artifact SHA-256 of {m['name']} v{m['version']}")]
         for m in plan["model_versions"]],
        empty="None.",
    ))
    deleted_files = steps.get("delete_old_artifacts", {}).get("artifacts", [])
    flows.append(t.paragraph(
        f"Files of {len(deleted_files)} replaced or retired version(s) trained on the person were deleted; a version "
        "kept on its DP guarantee keeps its file."
    ))
    verified = steps.get("verify_claims", {}).get("checks", [])
    if verified:
        flows.append(t.heading("Verified against the database before issue"))
        flows.append(t.data_table(
            ["Claim", "Holds"], [[c["claim"], "yes" if c["ok"] else "NO"] for c in verified],
        ))
    flows.append(t.note("ε is at the run's δ and per record (a person with several records is protected at the "
                        "group-privacy bound, given in the model lineage report); ∞ (None) for non-private training."))
    flows.append(t.heading("Exemptions and decisions against the policy"))
    if exemptions:
        flows.append(t.key_value_table(exemptions))
        if any(m["remediation"] == RemediationAction.RELY_ON_DP for m in plan["model_versions"]):
            flows.append(t.paragraph(
                "A model kept on its differential-privacy guarantee is recorded as an accepted risk: a model trained "
                "on personal data is not anonymous by default (EDPB Opinion 28/2024)."
            ))
    else:
        flows.append(t.paragraph("None: every artifact was remediated as the policy proposes."))
    flows.append(t.heading("Other personal data"))
    flows.append(t.paragraph(
        f"{steps.get('delete_consent_events', {}).get('consent_events_deleted', 0)} consent event(s) and the subject "
        "row were deleted. Audit events refer to the person only by the random reference above, whose link to the "
        "person's pseudonym was deleted with the subject row; the audit chain still verifies. An erasure receipt keeps "
        "counts and a separately keyed hash of the identifier, so that a repeated request is recognised; it does not "
        "re-identify anyone."
    ))
    flows.append(t.heading("Recipients to tell (Art. 19)"))
    told = {n.recipient: n for n in request.recipient_notifications.all()}

    def told_text(name: str) -> str:
        n = told.get(name)
        if n is None or n.notified_at is None:
            return "to be told; the DPO records when and how"
        return f"told {timezone.localtime(n.notified_at):%Y-%m-%d %H:%M} ({n.method})"

    flows.append(t.data_table(
        ["Recipient", "Third country", "Told"],
        [[r["name"], r["third_country"] or "—", told_text(r["name"])] for r in plan["recipients"]],
        empty="The processing activities involved name no recipients.",
    ))
    if plan["recipients"]:
        flows.append(t.paragraph(
            "The ledger sends no message to recipients: the controller tells each of the erasure and records, on "
            "the request, when and how (audit event 'erasure_request.recipient_notified')."
        ))
    flows.append(t.heading("Backups"))
    flows.append(t.paragraph(settings.ERASURE_BACKUP_STATEMENT))
    if request.refusal_ground:
        flows.append(t.heading("Refusal (Art. 12(4))"))
        flows.append(t.paragraph(f"{RefusalGround(request.refusal_ground).label}. {request.refusal_notice}"))
    flows.append(t.heading("Your rights"))
    flows.append(t.paragraph(
        "If you consider that this request was not handled in accordance with the GDPR, you have the right to lodge a "
        "complaint with a supervisory authority (Art. 77) and to an effective judicial remedy (Art. 79)."
    ))
    flows.append(t.heading("Audit chain"))
    flows.append(_audit_events_table(request))
    head = t.hash_cell(checkpoint.hash, label=f"Audit chain head at position {checkpoint.position} (signed checkpoint)")
    flows.append(t.paragraph(t.rich(
        f"Chain head when this certificate was written: position {checkpoint.position}, hash ", head,
        ". The certificate's own SHA-256 is recorded in the next event ('erasure.certificate_issued')."
    )))
    flows.append(t.heading("Signed checkpoint of the audit chain", level=2))
    flows.append(t.key_value_table([
        ("Position", checkpoint.position), ("Hash", head), ("Signed at", checkpoint.created_at),
        ("Key id", checkpoint.key_id), ("Reason", checkpoint.reason),
        # Two lines of 44 characters: one unbroken line would run past the page's margin.
        ("Signature (Ed25519, base64; one string)", f"{checkpoint.signature[:44]}\n{checkpoint.signature[44:]}"),
    ]))
    flows.append(t.paragraph(
        "The chain head above is signed with the controller's audit signing key, which the database does not hold. "
        "With the public key alone anyone can check this signature and, given an export of the audit chain, that the "
        "chain still holds this hash at this position: a chain cut or rewritten after this certificate is detected "
        "(tools/verify_audit_checkpoint.py). The checkpoint as one JSON line is at the end, after the hashes in full."
    ))
    appendix = [
        t.heading("Signed checkpoint as one JSON line", level=2),
        # Spaces after the separators let the line wrap (only there); it is the same JSON object.
        t.paragraph(json.dumps(checkpoint.as_dict(), sort_keys=True), style="mono_note"),
    ]
    path = Path(settings.REPORT_ROOT) / relative
    digest = t.render_pdf(path, flows, title=f"Certificate of erasure — request {request.pk}",
                          subject="GDPR Art. 17 erasure certificate", appendix=appendix)
    return relative, digest, checkpoint.as_dict()


def refusal_notice_relative_path(request: ErasureRequest | RightsRequest) -> str:
    if isinstance(request, RightsRequest):
        return f"rights/request-{request.pk}/refusal-notice.pdf"
    return f"erasure/erasure-refusal-notice-{request.pk}.pdf"


def refusal_notice_write(*, request: ErasureRequest | RightsRequest) -> tuple[str, str]:
    """The written answer to a refused request (Art. 12(4)): the reasons for not acting, the
    ground relied on (an Art. 17(3) exemption for erasure, Art. 12(5) for the other rights),
    and the rights to complain and to a judicial remedy. Returns (path relative to
    REPORT_ROOT, SHA-256)."""
    from governance.reports import toolkit as t

    relative = refusal_notice_relative_path(request)
    erasure = isinstance(request, ErasureRequest)
    what = "an erasure request" if erasure else f"a request under {request.article}"
    facts = [("Erasure request", request.pk)] if erasure else [
        ("Request", request.pk), ("Right exercised", f"{request.get_type_display()}")]
    facts += [("Data subject reference", request.subject_ref or "— (no data held)")]
    if erasure:
        facts.append(("Ground invoked by the person", ErasureGround(request.ground).label))
    facts += [
        ("Received", request.received_at),
        ("Answer due", request.extended_due_at or request.due_at),
        ("Refused", request.rejected_at),
        ("Exemption relied on" if erasure else "Ground relied on (Art. 12(5))",
         (RefusalGround if erasure else RightsRefusalGround)(request.refusal_ground).label),
        ("Deadline met", _timeliness_text(request=request, answered_at=request.rejected_at)),
    ]
    flows = t.title_block(
        f"Notice of refusal of {what}",
        subtitle="GDPR Art. 12(4) — reasons for not taking action; "
                 + ("Art. 17(3) exemption" if erasure else "Art. 12(5) manifestly unfounded or excessive"),
        facts=facts,
    )
    flows += _lateness_flows(t, request=request, answered_at=request.rejected_at)
    # The notice itself carries the ground, the justification and the rights.
    flows.append(t.heading("Our answer"))
    flows.append(t.paragraph(request.refusal_notice))
    flows.append(t.heading("Audit chain"))
    flows.append(_audit_events_table(request))
    event = "erasure.refusal_notice_issued" if erasure else "rights_request.refusal_notice_issued"
    flows.append(t.paragraph(f"The SHA-256 of this notice is recorded in the next audit event ('{event}')."))
    path = Path(settings.REPORT_ROOT) / relative
    kind = "erasure" if erasure else request.get_type_display().split(" (")[0].lower()
    digest = t.render_pdf(path, flows, title=f"Notice of refusal — {kind} request {request.pk}",
                          subject="GDPR Art. 12(4) notice of refusal")
    return relative, digest
