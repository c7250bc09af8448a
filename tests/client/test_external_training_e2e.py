"""Issue 20's end to end: a CNN trained with real Opacus in another process, governed by the ledger.

The live server (PostgreSQL, a real Celery worker) holds a consent-filtered snapshot; a
separate Python process that knows only the URL, an API key and the snapshot id exports it
through the client, trains a Conv1d network with Opacus inside ``private_training`` and
reports. The registered version's ε must be Opacus's own for the history that process
recorded: the ledger recomputed it rather than trusting anyone.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant
from privacy_ledger_client import LedgerClient

from governance.models import DataSubject
from governance.pseudonymisation import pseudonymise
from mlops.models import ModelVersion, TrainingRun
from rights.models import ErasureRequest
from tests.client.helpers import api_key
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for
from tests.rights.test_workspace_requests import pdf_text
from tests.webhooks.receiver import Receiver
from tests.webhooks.test_webhooks import _verifies

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The example the docs show is the trainer: it cannot rot unnoticed.
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_anywhere.py"


def _client_process_env(key: str) -> dict[str, str]:
    # The trainer is not a Django process: nothing of the server's configuration leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "CELERY_"))}
    env["PYTHONWARNINGS"] = "ignore"
    return env | {"LEDGER_API_KEY": key}


def test_a_cnn_trained_elsewhere_is_registered_with_opacus_own_epsilon(live_server, celery_worker, tmp_path):
    snapshot = make_snapshot(n=64, d=8, seed=3)
    key = api_key("ml_engineer")
    artifact = tmp_path / "cnn.pt"

    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", live_server.url, "--snapshot", str(snapshot.pk), "--epochs", "2",
         "--batch-size", "16", "--target-epsilon", "3", "--artifact", str(artifact), "--json"],
        capture_output=True, text=True, timeout=300, env=_client_process_env(key), cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    # What Opacus itself says of the history the trainer's accountant recorded.
    history = [tuple(segment) for segment in out["history"]]
    opacus_epsilon = RDPAccountant()
    opacus_epsilon.history = list(history)
    expected = opacus_epsilon.get_epsilon(delta=out["delta"])

    version = ModelVersion.objects.select_related("training_run").get(pk=out["model_version"]["id"])
    assert version.epsilon == pytest.approx(expected, rel=1e-9)
    assert out["model_version"]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert out["engine_epsilon"] == pytest.approx(expected, rel=1e-9)
    # Trained as planned: two epochs of the planned steps at q = 1/ceil(64/16), so the ε
    # spent is the ε the ledger reserved, and the ledger's Merkle root is the exported one.
    run = TrainingRun.objects.get(pk=out["run_id"])
    assert history == [(run.noise_multiplier, 0.25, 8)]
    assert expected == pytest.approx(out["planned_epsilon"], rel=1e-9)
    assert out["records"] == 64 and out["merkle_root"] == snapshot.merkle_root

    assert run.executor == "external" and run.status == "succeeded" and run.snapshot_id == snapshot.pk
    assert version.training_run_id == run.pk and version.external
    # The weights the trainer kept are the ones the ledger registered.
    assert version.artifact_sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert out["servable"] is True and out["status"] == version.status


def test_an_erasure_of_a_person_in_that_snapshot_reaches_the_owners_webhook_signed_and_waits_for_them(
        live_server, celery_worker, tmp_path):
    """The rest of the issue's end to end: the owner of the CNN subscribes a webhook, a person in
    the snapshot is erased through the API, the owner's receiver gets a signed taint
    notification, the erasure waits for the owner, and the owner's retirement (through the
    client) completes it with a certificate that says so."""
    snapshot = make_snapshot(n=48, d=6, seed=5)
    # One member of the snapshot is a real person the DPO can find by their identifier.
    person = "dora.outside@example.org"
    subject_id = snapshot.members.order_by("record_id").values_list("subject_id", flat=True)[7]
    DataSubject.objects.filter(pk=subject_id).update(pseudonym=pseudonymise(person))
    owner_key, dpo_key = api_key("ml_engineer", "cnn_owner"), api_key("dpo", "cnn_dpo")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--url", live_server.url, "--snapshot", str(snapshot.pk), "--epochs", "1",
         "--batch-size", "16", "--target-epsilon", "3", "--artifact", str(tmp_path / "cnn.pt"), "--json"],
        capture_output=True, text=True, timeout=300, env=_client_process_env(owner_key), cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    version_id = json.loads(done.stdout.strip().splitlines()[-1])["model_version"]["id"]

    owner, dpo = (LedgerClient(live_server.url, api_key=key) for key in (owner_key, dpo_key))
    receiver = Receiver(codes=[200]).start()
    try:
        hook = owner.request("POST", "webhooks/", expect=(201,), json={
            "url": receiver.url, "dataset": snapshot.dataset_id, "events": ["tainted", "retired"]})
        request_id = dpo.request("POST", "erasure-requests/", expect=(201,), json={
            "subject": person, "ground": "17_1_a", "channel": "email"})["id"]
        dpo.request("POST", f"erasure-requests/{request_id}/verify/", json={"method": "signed letter"})
        impact = dpo.request("GET", f"erasure-requests/{request_id}/impact/")
        assert impact["totals"]["model_versions"] == 1
        dpo.request("POST", f"erasure-requests/{request_id}/execute/", expect=(202,))

        wait_for(lambda: len(receiver.received) >= 1, timeout=120, what="the taint notification")
        got = receiver.received[0]
        assert _verifies(hook["secret"], got.headers["X-Ledger-Signature"], got.body)
        body = json.loads(got.body)
        assert body["event"] == "model_version.status_changed"
        assert body["model_version"]["id"] == version_id
        assert body["model_version"]["status"] == "tainted" and body["model_version"]["external"] is True
        assert owner.model_status(version_id).servable is False

        # The ledger cannot retrain weights it never had: the erasure waits for the owner.
        def waiting() -> bool:
            steps = dpo.request("GET", f"erasure-requests/{request_id}/")["steps"]
            return any(step["status"] == "waiting" for step in steps)

        wait_for(waiting, timeout=120, what="the erasure waiting for the owner")
        assert dpo.request("GET", f"erasure-requests/{request_id}/")["status"] == "in_progress"

        retired = owner.retire_model(version_id, reason="not retrained: the risk model is replaced by rules")
        assert retired.status == "retired" and not retired.servable
        wait_for(lambda: dpo.request("GET", f"erasure-requests/{request_id}/")["status"] == "completed",
                 timeout=120, what="the erasure completing after the retirement")
        wait_for(lambda: len(receiver.received) >= 2, timeout=60, what="the retirement notification")
        assert json.loads(receiver.received[1].body)["model_version"]["status"] == "retired"
        assert all(_verifies(hook["secret"], r.headers["X-Ledger-Signature"], r.body) for r in receiver.received)
        steps = dpo.request("GET", f"erasure-requests/{request_id}/")["steps"]
        lineage = [step for step in steps if step["name"].startswith("remediate_lineage_")]
        assert [step["details"]["outcome"] for step in lineage] == ["retired_while_waiting"]
        certificate = dpo.session.get(dpo.url(f"erasure-requests/{request_id}/certificate/"), timeout=60)
        assert certificate.status_code == 200 and certificate.content.startswith(b"%PDF")
        text = " ".join(pdf_text(certificate.content).split())
        assert "trained outside the ledger" in text and "retired" in text
        # The trainer kept its weights and sent only their hash: nothing the ledger deleted.
        assert "the ledger held no copy of its weights" in text
    finally:
        receiver.stop()
    assert ErasureRequest.objects.get(pk=request_id).certificate_path
