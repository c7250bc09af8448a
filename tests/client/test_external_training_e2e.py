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

from mlops.models import ModelVersion, TrainingRun
from tests.client.helpers import api_key
from tests.mlops.factories import make_snapshot

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
