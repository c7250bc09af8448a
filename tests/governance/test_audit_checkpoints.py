"""Signed checkpoints anchor the audit chain outside the database (issue 14, item 12).

Whoever can write the database can cut events off the end of the chain and rewrite the
chain-head row: the chain alone then still verifies. The checkpoints, signed with a key the
database never holds and kept in a file outside it, find the cut, a rewrite, a forged
checkpoint and a missing one, and an erasure certificate's checkpoint lets its holder find a
later cut with the public key alone.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone
from pypdf import PdfReader

from governance import audit, audit_anchor, checkpoints
from governance.audit_anchor import audit_chain_anchored_verify
from governance.models import AuditEvent, ConsentEvent
from governance.selectors import audit_chain_verify
from governance.services import audit_event_record
from governance.services.audit import audit_checkpoint_write
from tests.governance.audit_helpers import audit_events_write_concurrently
from tests.rights import helpers as h

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import verify_audit_checkpoint  # noqa: E402  (the stand-alone auditor's tool)


def _write_events(n: int) -> None:
    # Each call is its own transaction, so the checkpoint after every N-th event is written.
    for i in range(n):
        audit_event_record(actor="tester", action="test.event", object_type="thing", object_id=i, details={"i": i})


def _raw(sql: str, params=()) -> None:
    # Tampering goes around the ORM guard on purpose: that is what an attacker with DB access does.
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _cut_tail(keep: int) -> None:
    """The issue's attack: delete the last events and rewrite the head row to match."""
    last = AuditEvent.objects.get(position=keep)
    _raw("DELETE FROM governance_auditevent WHERE position > %s", [keep])
    _raw("UPDATE governance_auditchainhead SET position = %s, hash = %s WHERE id = 1", [keep, last.hash])


def _lines() -> list[str]:
    return audit_anchor.checkpoint_file().lines()


@pytest.fixture
def every_ten(settings):
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 10
    settings.AUDIT_CHECKPOINT_SLACK_EVENTS = 10
    return settings


@pytest.fixture
def public_key_file(tmp_path) -> Path:
    """What the DPO hands an auditor: the public key, and nothing else."""
    path = tmp_path / "audit.pub"
    path.write_text(checkpoints.public_key_text(audit_anchor.signing_key().public_key()) + "\n")
    return path


@pytest.mark.django_db(transaction=True)
def test_cutting_the_tail_and_rewriting_the_head_is_reported_as_truncation(every_ten, capsys):
    _write_events(100)
    assert [checkpoints.checkpoint_parse(line).position for line in _lines()] == list(range(10, 101, 10))
    _cut_tail(keep=99)
    assert audit_chain_verify().ok  # the chain alone cannot tell: it ends in a consistent head

    with pytest.raises(SystemExit) as excinfo:
        call_command("audit_verify")
    assert excinfo.value.code == 1
    err = capsys.readouterr().err
    assert "BROKEN at position 100" in err
    assert "truncated: checkpoint at position 100" in err and "the chain ends at 99" in err
    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 100


@pytest.mark.django_db(transaction=True)
def test_cutting_deeper_names_the_first_missing_position(every_ten, public_key_file, tmp_path, capsys):
    _write_events(40)
    copy = tmp_path / "auditor-copy.jsonl"  # the auditor's copy of the checkpoint file
    copy.write_text(audit_anchor.checkpoint_file().path.read_text())
    _cut_tail(keep=27)
    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 28
    assert "checkpoint at position 30 " in result.reason and "ends at 27" in result.reason

    # The deployment's file is gone too; the auditor's copy and public key still find the cut.
    os.remove(audit_anchor.checkpoint_file().path)
    with pytest.raises(SystemExit):
        call_command("audit_verify", checkpoints=str(copy), public_key=[str(public_key_file)])
    assert "BROKEN at position 28: truncated: checkpoint at position 30" in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
def test_a_rewritten_event_covered_by_a_checkpoint_is_found(every_ten):
    _write_events(30)
    # Alter event 15 and recompute every hash after it, and the head: a consistent forgery.
    _raw("UPDATE governance_auditevent SET actor = 'mallory' WHERE position = 15")
    prev = AuditEvent.objects.get(position=14).hash
    for event in AuditEvent.objects.filter(position__gte=15).order_by("position"):
        fields = audit.event_fields(
            position=event.position, occurred_at=event.occurred_at, actor=event.actor, action=event.action,
            object_type=event.object_type, object_id=event.object_id, subject_ref=event.subject_ref,
            details=event.details,
        )
        digest = audit.chain_hash(prev, fields)
        _raw("UPDATE governance_auditevent SET prev_hash = %s, hash = %s WHERE position = %s", [prev, digest, event.position])
        prev = digest
    _raw("UPDATE governance_auditchainhead SET hash = %s WHERE id = 1", [prev])
    assert audit_chain_verify().ok

    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 20
    assert result.reason.startswith("rewritten at position 20")
    assert "between positions 11 and 20" in result.reason


@pytest.mark.django_db(transaction=True)
def test_a_forged_checkpoint_is_refused(every_ten, auditor_client):
    _write_events(12)
    store = audit_anchor.checkpoint_file()
    # Signed by a key that is not the deployment's: not trusted.
    stranger = checkpoints.checkpoint_sign(
        private_key=Ed25519PrivateKey.generate(), position=12, hash=AuditEvent.objects.get(position=12).hash,
        reason="events",
    )
    store.append(stranger)
    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 12
    assert f"signed by key {stranger.key_id}, which is not a trusted" in result.reason

    # The right key id, but a position altered after signing: the signature does not verify.
    lines = [line for line in _lines() if stranger.key_id not in line]
    genuine = checkpoints.checkpoint_parse(lines[0]).as_dict()
    lines.append(json.dumps({**genuine, "position": 11, "hash": AuditEvent.objects.get(position=11).hash}))
    result = audit_chain_anchored_verify(lines=lines)
    assert not result.ok and result.broken_position == 11
    assert "signature does not verify" in result.reason

    body = auditor_client.get("/api/v1/audit-events/verify/").json()
    assert body["ok"] is False and body["broken_position"] == 12 and body["checkpoints"] == 2


@pytest.mark.django_db(transaction=True)
def test_a_missing_checkpoint_is_reported_until_one_is_written(every_ten, settings):
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 0  # checkpoints not written (a writer that died after its commit)
    _write_events(25)
    assert _lines() == []
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 10
    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 1
    assert "missing checkpoint" in result.reason and "no valid checkpoint at all" in result.reason

    call_command("audit_checkpoint")
    assert audit_chain_anchored_verify().ok
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 0
    _write_events(21)
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 10
    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 26
    assert "the last checkpoint is at position 25" in result.reason


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_transaction_is_never_anchored(every_ten):
    with pytest.raises(RuntimeError), transaction.atomic():
        _write_events(15)
        raise RuntimeError("the caller fails after appending")
    assert _lines() == []
    _write_events(10)
    assert [checkpoints.checkpoint_parse(line).position for line in _lines()] == [10]
    assert audit_chain_anchored_verify().ok


@pytest.mark.django_db(transaction=True)
def test_the_beat_task_signs_the_head_only_when_it_moved(every_ten):
    from governance.tasks import audit_checkpoint

    assert audit_checkpoint() == {"written": False, "position": None}  # empty chain
    _write_events(3)
    assert audit_checkpoint() == {"written": True, "position": 3}
    assert audit_checkpoint() == {"written": False, "position": None}
    assert checkpoints.checkpoint_parse(_lines()[-1]).reason == "interval"


@pytest.mark.django_db(transaction=True)
def test_a_head_that_went_back_is_found_even_when_the_events_were_put_back(every_ten):
    _write_events(20)
    saved = list(AuditEvent.objects.filter(position__gt=15).order_by("position").values())
    _cut_tail(keep=15)
    audit_checkpoint_write(reason="interval")  # the signer trusts the head the database shows
    for row in saved:  # and the attacker restores the rows later
        AuditEvent.objects.bulk_create([AuditEvent(**row)])
    _raw("UPDATE governance_auditchainhead SET position = 20, hash = %s WHERE id = 1", [saved[-1]["hash"]])
    assert audit_chain_verify().ok
    result = audit_chain_anchored_verify()
    assert not result.ok and result.broken_position == 16 and "went backwards" in result.reason


@pytest.mark.django_db(transaction=True)
def test_an_erasure_certificate_prints_its_checkpoint_and_its_holder_detects_a_later_cut(
    every_ten, auditor_client, dpo_client, public_key_file, tmp_path, settings, capsys
):
    from rights import execution, services
    from rights.models import ErasureRequest, ErasureStatus

    person = h.subject_for("erin@example.org")
    act = h.activity()
    ds = h.people_dataset(act=act, people=[person, *h.crowd(5)], records_per_person=1)
    h.snapshot_of(ds)
    ConsentEvent.objects.create(
        event_id="erin-given", subject=person, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
    )
    request = services.erasure_request_receive(identifier="erin@example.org", ground="17_1_a")
    services.erasure_request_verify(erasure_request=request, method="signed letter")
    ErasureRequest.objects.filter(pk=request.pk).update(status=ErasureStatus.IN_PROGRESS, execution_started_at=timezone.now())
    execution.erasure_request_execute(request_id=request.pk)

    # JSON: the request's certificate step carries the checkpoint.
    body = dpo_client.get(f"/api/v1/erasure-requests/{request.pk}/").json()
    checkpoint = next(s for s in body["steps"] if s["name"] == "certificate")["details"]["checkpoint"]
    issued = AuditEvent.objects.get(action="erasure.certificate_issued", object_id=str(request.pk))
    listed = AuditEvent.objects.filter(object_type="erasure_request", object_id=str(request.pk), position__lt=issued.position)
    assert checkpoint["position"] == issued.position - 1 >= max(listed.values_list("position", flat=True))
    assert checkpoint["hash"] == AuditEvent.objects.get(position=checkpoint["position"]).hash
    assert checkpoint["reason"] == f"erasure_certificate:{request.pk}"
    # It is in the checkpoint file too (appended once the step committed).
    assert json.dumps(checkpoint, sort_keys=True) in [json.dumps(json.loads(line), sort_keys=True) for line in _lines()]

    # PDF: the same checkpoint, signature included.
    pdf = b"".join(dpo_client.get(f"/api/v1/erasure-requests/{request.pk}/certificate/").streaming_content)
    text = "".join("".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages).split())
    assert "Signedcheckpointoftheauditchain" in text
    for value in (str(checkpoint["position"]), checkpoint["hash"], checkpoint["key_id"], checkpoint["signature"]):
        assert value in text

    def holder_verifies() -> tuple[int, str]:
        export = tmp_path / "chain.json"
        events, url = [], "/api/v1/audit-events/?limit=1000"
        while url:
            page = auditor_client.get(url).json()
            events.extend(page["results"])
            url = page["next"]
        export.write_text(json.dumps(events))
        code = verify_audit_checkpoint.main([
            "--public-key", str(public_key_file), "--checkpoint", json.dumps(checkpoint), "--chain", str(export),
        ])
        return code, capsys.readouterr().out

    code, out = holder_verifies()
    assert code == 0, out
    assert verify_audit_checkpoint.main(["--public-key", str(public_key_file), "--checkpoint", json.dumps(checkpoint)]) == 0

    # Later, the events from the certificate's on are cut and the head rewritten. The holder,
    # with the public key and the certificate alone, finds it (the file need not survive).
    _cut_tail(keep=checkpoint["position"] - 2)
    os.remove(audit_anchor.checkpoint_file().path)
    assert audit_chain_verify().ok
    code, out = holder_verifies()
    assert code == 1
    assert f"BROKEN at position {checkpoint['position'] - 1}" in out
    assert f"truncated: checkpoint at position {checkpoint['position']}" in out

    # A forged certificate checkpoint (the position moved back) does not verify.
    forged = {**checkpoint, "position": checkpoint["position"] - 2}
    assert verify_audit_checkpoint.main(["--public-key", str(public_key_file), "--checkpoint", json.dumps(forged)]) == 1
    assert "signature does not verify" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_produce_valid_checkpoints_in_order(settings):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database; SQLite serialises writers itself")
    settings.AUDIT_CHECKPOINT_EVERY_EVENTS = 5
    settings.AUDIT_CHECKPOINT_SLACK_EVENTS = 5
    errors = audit_events_write_concurrently(writers=4, events_each=25)
    assert not errors, errors
    parsed = [checkpoints.checkpoint_parse(line) for line in _lines()]  # every line whole
    positions = [cp.position for cp in parsed]
    assert positions == sorted(positions) and positions[-1] == 100
    # One checkpoint per crossing of a multiple of 5, minus those whose head was already signed.
    assert 4 <= len(parsed) <= 20 and all(cp.reason == "events" for cp in parsed)
    result = audit_chain_anchored_verify()
    assert result.ok, result.problems
    assert result.checked == 100 and result.last_checkpoint_position == 100


def test_the_signing_key_generator_prints_a_usable_pair(tmp_path):
    out = io.StringIO()
    call_command("audit_signing_key_generate", stdout=out)
    text = out.getvalue()
    seed = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("AUDIT_SIGNING_KEY="))
    key = checkpoints.private_key_load(seed)
    public = checkpoints.public_keys_load(text.split("\n", 1)[1].rsplit("key id:", 1)[0])
    assert [checkpoints.key_id(k) for k in public] == [checkpoints.key_id(key.public_key())] * 2  # base64 and PEM
    cp = checkpoints.checkpoint_sign(private_key=key, position=3, hash="a" * 64, reason="manual")
    assert checkpoints.checkpoint_signature_problem(cp, public) == ""

    private_file = tmp_path / "audit.key"
    call_command("audit_signing_key_generate", private_key_file=str(private_file),
                 public_key_file=str(tmp_path / "audit.pub"), stdout=io.StringIO())
    assert oct(private_file.stat().st_mode & 0o777) == "0o600"
    assert isinstance(checkpoints.private_key_load(private_file.read_text()), Ed25519PrivateKey)


def _deploy_check(**env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_SETTINGS_MODULE", "AUDIT_", "DEBUG"))}
    base.update({
        "DEBUG": "0", "SECRET_KEY": "k" * 20 + "production-secret-key-with-enough-entropy-0123456789",
        "PSEUDONYMISATION_KEY": "a-separate-pseudonymisation-key-0123456789", "ALLOWED_HOSTS": "ledger.example.org",
        "DATABASE_URL": "sqlite:////tmp/privacy-ledger-deploy-check.sqlite3", **env,
    })
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"], cwd=ROOT, env=base,
        capture_output=True, text=True, timeout=120,
    )


def test_production_without_a_signing_key_fails_the_deploy_check():
    result = _deploy_check()
    assert result.returncode != 0
    assert "governance.E001" in result.stderr and "AUDIT_SIGNING_KEY" in result.stderr
    result = _deploy_check(AUDIT_SIGNING_KEY="not-a-key")
    assert result.returncode != 0 and "AUDIT_SIGNING_KEY: the audit signing key is neither PEM nor base64" in result.stderr
    # With a key the check is clean: tests/test_settings.py::test_deploy_check_is_clean_under_production_settings.
