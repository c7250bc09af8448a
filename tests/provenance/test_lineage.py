import json
import time
from datetime import timedelta

import pytest
from django.apps import apps
from django.conf import settings
from django.utils import timezone
from prov.model import ProvDocument

from provenance import selectors, services
from provenance.models import DataRecord
from tests.provenance.helpers import SCHEMA, activity, consent, purpose, row

pytestmark = pytest.mark.django_db
CODE = "ml.training.clinical_risk"


@pytest.fixture
def lineage(db):
    act = activity()
    parent = services.dataset_create(name="raw ehr extract", owner="data", processing_activity=act, schema=SCHEMA)
    dataset = services.dataset_create(
        name="clinical risk features", owner="ml", processing_activity=act, schema=SCHEMA,
        parents=[parent], transformation="filtered adults",
    )
    services.dataset_records_ingest(dataset=dataset, rows=[row("alice"), row("alice", 60), row("bob")], actor="test")
    DataRecord.objects.filter(dataset=dataset).update(ingested_at=timezone.now() - timedelta(days=2))
    consent("alice", CODE, "given", timezone.now() - timedelta(days=1))
    consent("bob", CODE, "given", timezone.now() - timedelta(days=1))
    snapshots = [services.snapshot_create(dataset=dataset, purpose=purpose(CODE)) for _ in range(2)]
    TrainingRun, ModelVersion = apps.get_model("mlops", "TrainingRun"), apps.get_model("mlops", "ModelVersion")
    run = TrainingRun.objects.create(name="risk", snapshot=snapshots[1], target_delta=1e-5)
    model = ModelVersion.objects.create(training_run=run, name="risk", version=1, artifact_path="risk/1", artifact_sha256="a" * 64)
    return {"parent": parent, "dataset": dataset, "snapshots": snapshots, "run": run, "model": model}


def test_subject_impact_finds_every_dataset_record_snapshot_run_and_model(dpo_client, lineage):
    response = dpo_client.post("/api/v1/subjects/impact/", {"subject": "Alice"}, format="json")
    assert response.status_code == 200
    impact = response.json()
    assert impact["found"] is True
    assert [(d["id"], d["record_count"]) for d in impact["datasets"]] == [(lineage["dataset"].pk, 2)]
    assert [(s["id"], s["records"]) for s in impact["snapshots"]] == [(s.pk, 2) for s in lineage["snapshots"]]
    assert [r["id"] for r in impact["training_runs"]] == [lineage["run"].pk]
    assert [m["id"] for m in impact["model_versions"]] == [lineage["model"].pk]
    assert "alice" not in json.dumps(impact).lower()


def test_subject_impact_of_an_unknown_person_is_empty(auditor_client, lineage):
    impact = auditor_client.post("/api/v1/subjects/impact/", {"subject": "nobody"}, format="json").json()
    assert impact["found"] is False and impact["datasets"] == [] and impact["counts"]["records"] == 0


def test_model_lineage_reaches_datasets_and_processing_activities(lineage):
    result = selectors.model_lineage(model_version=lineage["model"])
    assert result["snapshot"]["id"] == lineage["snapshots"][1].pk
    assert result["dataset"]["id"] == lineage["dataset"].pk
    assert [d["id"] for d in result["ancestor_datasets"]] == [lineage["parent"].pk]
    assert result["processing_activities"][0]["purposes"] == [CODE]


def test_dataset_lineage_endpoint(ml_client, lineage):
    body = ml_client.get(f"/api/v1/datasets/{lineage['dataset'].pk}/lineage/").json()
    assert body["record_count"] == 3 and body["subject_count"] == 2
    assert [s["id"] for s in body["snapshots"]] == [s.pk for s in lineage["snapshots"]]
    assert [m["id"] for m in body["model_versions"]] == [lineage["model"].pk]


def test_prov_json_reads_back_with_prov(auditor_client, lineage):
    snapshot = lineage["snapshots"][1]
    response = auditor_client.get(f"/api/v1/snapshots/{snapshot.pk}/prov/")
    assert response.status_code == 200
    doc = ProvDocument.deserialize(content=response.content.decode(), format="json")
    entities = {str(r.identifier) for r in doc.get_records() if r.get_type().localpart == "Entity"}
    assert {f"pl:dataset-{lineage['dataset'].pk}", f"pl:dataset-{lineage['parent'].pk}",
            f"pl:snapshot-{snapshot.pk}", f"pl:model-version-{lineage['model'].pk}"} <= entities
    kinds = {r.get_type().localpart for r in doc.get_records()}
    assert {"Activity", "Usage", "Generation", "Derivation", "Association"} <= kinds
    root = [r for r in doc.get_records() if str(r.identifier) == f"pl:snapshot-{snapshot.pk}"][0]
    assert snapshot.merkle_root in {str(v) for _, v in root.attributes}
    model_response = auditor_client.get(f"/api/v1/lineage/models/{lineage['model'].pk}/prov/")
    assert model_response.status_code == 200
    model_doc = ProvDocument.deserialize(content=model_response.content.decode(), format="json")
    assert auditor_client.get("/api/v1/lineage/models/999999/prov/").status_code == 404
    assert any(str(r.identifier) == f"pl:training-run-{lineage['run'].pk}" for r in model_doc.get_records())


REQUIRED_RUN_EVENT_FIELDS = ("eventType", "eventTime", "run", "job", "producer", "schemaURL", "inputs", "outputs")


def _check_run_event(event: dict) -> None:
    for field in REQUIRED_RUN_EVENT_FIELDS:
        assert field in event, field
    assert event["eventType"] in {"START", "COMPLETE"}
    timezone.datetime.fromisoformat(event["eventTime"])
    assert event["run"]["runId"] and event["job"]["namespace"] and event["job"]["name"]
    assert event["schemaURL"].startswith("https://openlineage.io/spec/")
    assert event["producer"].startswith("https://")
    for dataset in event["inputs"] + event["outputs"]:
        assert dataset["namespace"] and dataset["name"]


def _wait_for(predicate, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return predicate()


@pytest.mark.django_db(transaction=True)
def test_openlineage_events_are_written_by_the_client_and_downloadable(celery_worker, auditor_client):
    act = activity(lawful_basis="contract")
    dataset = services.dataset_create(name="ol dataset", owner="ml", processing_activity=act, schema=SCHEMA)
    path = settings.OPENLINEAGE_FILE
    snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
    run_id = str(snapshot.openlineage_run_id)

    def mine():
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if run_id in line]
        return events if len(events) == 2 else []

    events = _wait_for(mine)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    for event in events:
        _check_run_event(event)
    assert events[1]["inputs"][0]["name"] == f"datasets/{dataset.pk}/ol dataset"
    assert events[1]["outputs"][0]["name"] == f"snapshots/{snapshot.pk}"
    downloaded = auditor_client.get(f"/api/v1/snapshots/{snapshot.pk}/openlineage/").json()
    assert [(e["eventType"], e["run"]["runId"], e["eventTime"]) for e in downloaded] == [
        (e["eventType"], e["run"]["runId"], e["eventTime"]) for e in events
    ]


@pytest.mark.django_db(transaction=True)
def test_openlineage_goes_over_http_when_a_url_is_configured(celery_worker, settings):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, json.loads(body)))
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.OPENLINEAGE_URL = f"http://127.0.0.1:{server.server_port}"
        dataset = services.dataset_create(name="ol http", owner="ml", processing_activity=activity(lawful_basis="contract"), schema=SCHEMA)
        snapshot = services.snapshot_create(dataset=dataset, purpose=purpose(CODE))
        _wait_for(lambda: len(received) >= 2)
    finally:
        server.shutdown()
        server.server_close()
    assert [path for path, _ in received] == ["/api/v1/lineage", "/api/v1/lineage"]
    assert [e["eventType"] for _, e in received] == ["START", "COMPLETE"]
    for _, event in received:
        _check_run_event(event)
        assert event["run"]["runId"] == str(snapshot.openlineage_run_id)
