"""Erasure end to end through the API and a real Celery worker (in-process without a broker):
request → verify → impact → execute → certificate; then nothing of the person is left."""

from __future__ import annotations

import hashlib

import pytest
import torch
from django.db import connection
from django.utils import timezone

from governance.models import ConsentEvent
from governance.pseudonymisation import normalise_identifier, pseudonymise
from governance.selectors import audit_chain_verify
from mlops import artifacts
from mlops.engine import sisa
from mlops.models import ModelVersion, SisaAssignment, TrainingRun
from mlops.services import unlearning
from rights.models import ErasureRequest
from tests.mlops.helpers import wait_for
from tests.rights import helpers as h

URL = "/api/v1/erasure-requests/"
DANA = "Dana.Person@Example.org"


def _columns_containing(needles: list[str]) -> list[tuple[str, str]]:
    """Every (table, column) of the database whose text contains one of ``needles``."""
    hits = []
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            for column in connection.introspection.get_table_description(cursor, table):
                for needle in needles:
                    cursor.execute(
                        f"SELECT COUNT(*) FROM {quote(table)} WHERE LOWER(CAST({quote(column.name)} AS TEXT)) LIKE %s",
                        [f"%{needle.lower()}%"],
                    )
                    if cursor.fetchone()[0]:
                        hits.append((table, column.name))
    return hits


def _shard_weights(state: dict, shard: int) -> dict:
    prefix = f"shard{shard}."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.django_db(transaction=True)
def test_erasure_end_to_end_with_sisa_and_retraining(celery_worker, dpo_client, auditor_client):
    dana = h.subject_for(DANA)
    pseudonym = dana.pseudonym
    act = h.activity(recipients=[{"name": "Acme Analytics", "third_country": ""}])
    people = [dana, *h.crowd(89)]
    ds_a = h.people_dataset(act=act, people=people, seed=1)
    ds_b = h.people_dataset(act=act, people=[dana, *people[1:30]], seed=2, records_per_person=2)
    snap_a, snap_b = h.snapshot_of(ds_a), h.snapshot_of(ds_b)
    ConsentEvent.objects.create(
        event_id="dana-given", subject=dana, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now(), notice_version="v1", notice_sha256="0" * 64, method="web",
        evidence={"ip": "192.0.2.0"},
    )
    sisa_run = h.train(snapshot=snap_a, name="sisa-model", sisa={"shards": 3, "slices": 2})
    plain_run = h.train(snapshot=snap_b, name="plain-model")
    sisa_version = ModelVersion.objects.get(training_run=sisa_run)
    plain_version = ModelVersion.objects.get(training_run=plain_run)
    placement = SisaAssignment.objects.get(training_run=sisa_run, subject=dana)
    old_state = artifacts.load_weights(relative=sisa_version.artifact_path, expected_sha256=sisa_version.artifact_sha256)

    # Request, verify, impact.
    created = dpo_client.post(URL, {"subject": DANA, "ground": "17_1_b", "channel": "web_form"}, format="json")
    assert created.status_code == 201, created.content
    request_id = created.json()["id"]
    assert dpo_client.post(f"{URL}{request_id}/verify/", {"method": "e-mail link"}, format="json").status_code == 200
    impact = auditor_client.get(f"{URL}{request_id}/impact/").json()
    assert impact["totals"] == {"records": 3, "datasets": 2, "snapshots": 2, "training_runs": 2, "model_versions": 2}
    proposals = {m["id"]: m for m in impact["model_versions"]}
    assert proposals[sisa_version.pk]["remediation"] == "sisa_unlearn"
    assert proposals[sisa_version.pk]["shards"] == [placement.shard]
    assert proposals[plain_version.pk]["remediation"] == "retrain"

    # The scan below finds the pseudonym where it is before the erasure.
    assert ("governance_datasubject", "pseudonym") in _columns_containing([pseudonym])

    # Execute on the worker.
    response = dpo_client.post(f"{URL}{request_id}/execute/", {}, format="json")
    assert response.status_code == 202, response.content
    wait_for(lambda: ErasureRequest.objects.filter(pk=request_id, status="completed").exists(),
             timeout=300, what="the erasure to complete")
    body = auditor_client.get(f"{URL}{request_id}/").json()
    assert body["status"] == "completed" and body["certificate_available"]
    assert [s["status"] for s in body["steps"]] == ["done"] * len(body["steps"])
    assert [n["recipient"] for n in body["recipient_notifications"]] == ["Acme Analytics"]

    # The certificate: a PDF whose hash is the one in the audit log.
    pdf = auditor_client.get(f"{URL}{request_id}/certificate/")
    assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
    content = b"".join(pdf.streaming_content)
    assert content.startswith(b"%PDF")
    digest = hashlib.sha256(content).hexdigest()
    assert digest == body["certificate_sha256"]
    events = auditor_client.get("/api/v1/audit-events/", {"action": "erasure.certificate_issued"}).json()["results"]
    assert [e["details"]["sha256"] for e in events] == [digest]

    # Nothing of the person anywhere: no pseudonym, no identifier, in any column of any table.
    needles = [pseudonym, normalise_identifier(DANA), DANA]
    assert _columns_containing(needles) == []
    assert pseudonymise(DANA) == pseudonym  # the scan looked for the right value
    assert pseudonym.encode() not in content and DANA.lower().encode() not in content.lower()
    assert audit_chain_verify().ok

    # Models: the SISA model was unlearned, the other retrained; old artifacts are gone.
    sisa_version.refresh_from_db()
    plain_version.refresh_from_db()
    assert sisa_version.status == plain_version.status == "superseded"
    assert not artifacts.absolute(sisa_version.artifact_path).exists()
    assert not artifacts.absolute(plain_version.artifact_path).exists()
    new_sisa = ModelVersion.objects.get(supersedes=sisa_version)
    new_plain = ModelVersion.objects.get(supersedes=plain_version)
    assert new_sisa.status == new_plain.status == "active"
    assert new_plain.training_run.snapshot_id == snap_b.pk and new_plain.epsilon is not None
    # Both new releases are charged to the privacy ledger; unlearning charges only the retrained stages.
    assert new_plain.training_run.ledger_entry.state == new_sisa.training_run.ledger_entry.state == "spent"
    assert 0 < new_sisa.training_run.ledger_entry.epsilon <= new_sisa.epsilon

    # Exact unlearning: the retrained shard equals a from-scratch retrain with the same
    # configuration on the amended data; every other shard kept its weights.
    new_state = artifacts.load_weights(relative=new_sisa.artifact_path, expected_sha256=new_sisa.artifact_sha256)
    old_run = TrainingRun.objects.get(pk=sisa_run.pk)
    X, y, slice_of_row = unlearning.shard_rows(run=old_run, shard=placement.shard)
    scratch = sisa.train_shard(
        X=torch.from_numpy(X), y=torch.from_numpy(y), slice_of_row=slice_of_row, slices=2,
        n_classes=old_run.n_classes, config=unlearning.shard_config(run=old_run, shard=placement.shard),
        shard=placement.shard,
    )
    expected = artifacts.strip_wrapper_prefix(scratch.result.state_dict)
    got = _shard_weights(new_state, placement.shard)
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert not all(torch.equal(got[k], _shard_weights(old_state, placement.shard)[k]) for k in expected)
    for shard in {0, 1, 2} - {placement.shard}:
        kept, before = _shard_weights(new_state, shard), _shard_weights(old_state, shard)
        assert all(torch.equal(kept[k], before[k]) for k in before)

    # A repeated request is recognised; it finds no data.
    again = dpo_client.post(URL, {"subject": DANA, "ground": "17_1_b"}, format="json").json()
    assert again["data_held"] is False and f"erasure request {request_id}" in again["outcome"]
