"""Standard lineage exports: OpenLineage run events and W3C PROV-JSON.

OpenLineage: every snapshot creation is a run (runId = Snapshot.openlineage_run_id) of
the job ``snapshot.<dataset name>`` with the dataset as input and the snapshot as
output; START carries the creation time, COMPLETE the completion time. Events go through
the openlineage-python client: HTTP when settings.OPENLINEAGE_URL is set, otherwise JSON
lines appended to settings.OPENLINEAGE_FILE. The downloads rebuild the same events from
the stored snapshot, so they match what was sent.

PROV: datasets, snapshots and model versions are prov:Entity; snapshot creation and
training runs are prov:Activity; the user who asked is a prov:Agent; the processing
activity (Art. 30 record) is the prov:Plan of the snapshot creation.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import documentation_dataset, schema_dataset
from openlineage.client.serde import Serde
from prov.model import PROV_TYPE, ProvDocument

from provenance.downstream import trained_on_snapshots
from provenance.models import Dataset, Snapshot

PL_NAMESPACE_URI = "https://privacy-ledger.example/ns/provenance#"
SCHEMA_TYPES = {"float": "DOUBLE", "int": "BIGINT", "bool": "BOOLEAN", "category": "STRING"}


# --- OpenLineage -----------------------------------------------------------------------


def openlineage_transport_config() -> dict:
    if settings.OPENLINEAGE_URL:
        config: dict[str, Any] = {"type": "http", "url": settings.OPENLINEAGE_URL, "endpoint": settings.OPENLINEAGE_ENDPOINT}
        if settings.OPENLINEAGE_API_KEY:
            config["auth"] = {"type": "api_key", "apiKey": settings.OPENLINEAGE_API_KEY}
        return config
    settings.OPENLINEAGE_FILE.parent.mkdir(parents=True, exist_ok=True)
    return {"type": "file", "log_file_path": str(settings.OPENLINEAGE_FILE), "append": True}


_clients: dict[str, OpenLineageClient] = {}


def openlineage_client() -> OpenLineageClient:
    """A client with the configured transport (one per configuration and process); the
    mlops training runs use it too."""
    config = openlineage_transport_config()
    key = json.dumps(config, sort_keys=True)
    if key not in _clients:
        _clients[key] = OpenLineageClient(config={"transport": config})
    return _clients[key]


def _dataset_name(dataset: Dataset) -> str:
    return f"datasets/{dataset.pk}/{dataset.name}"


def snapshot_openlineage_events(*, snapshot: Snapshot) -> list[RunEvent]:
    dataset = snapshot.dataset
    namespace = settings.OPENLINEAGE_NAMESPACE
    fields = [
        schema_dataset.SchemaDatasetFacetFields(name=f["name"], type=SCHEMA_TYPES[f["type"]])
        for f in [*dataset.schema["features"], dataset.schema["label"]]
    ]
    inputs = [
        InputDataset(
            namespace=namespace, name=_dataset_name(dataset),
            facets={
                "schema": schema_dataset.SchemaDatasetFacet(fields=fields),
                **({"documentation": documentation_dataset.DocumentationDatasetFacet(description=dataset.description)}
                   if dataset.description else {}),
            },
        )
    ]
    outputs = [OutputDataset(namespace=namespace, name=f"snapshots/{snapshot.pk}", facets={"schema": schema_dataset.SchemaDatasetFacet(fields=fields)})]
    run = Run(runId=str(snapshot.openlineage_run_id))
    job = Job(namespace=namespace, name=f"snapshot.{dataset.name}")
    started = snapshot.created_at.isoformat()
    completed = (snapshot.completed_at or snapshot.created_at).isoformat()
    return [
        RunEvent(eventType=RunState.START, eventTime=started, run=run, job=job, producer=settings.OPENLINEAGE_PRODUCER, inputs=inputs, outputs=[]),
        RunEvent(eventType=RunState.COMPLETE, eventTime=completed, run=run, job=job, producer=settings.OPENLINEAGE_PRODUCER, inputs=inputs, outputs=outputs),
    ]


def openlineage_emit_snapshot(*, snapshot: Snapshot) -> None:
    client = openlineage_client()
    for event in snapshot_openlineage_events(snapshot=snapshot):
        client.emit(event)


def training_run_openlineage_run_id(run) -> str:
    """A stable OpenLineage runId for a training run (the same id for START and its end)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"privacy-ledger/{settings.OPENLINEAGE_NAMESPACE}/training-run/{run.pk}"))


def training_run_openlineage_events(*, run) -> list[RunEvent]:
    """START and the terminal event (COMPLETE, FAIL or ABORT) of a finished training run:
    the snapshot it read as input, the model version it registered as output."""
    namespace = settings.OPENLINEAGE_NAMESPACE
    ol_run = Run(runId=training_run_openlineage_run_id(run))
    job = Job(namespace=namespace, name=f"training.{run.name or run.pk}")
    inputs = [InputDataset(namespace=namespace, name=f"snapshots/{run.snapshot_id}")]
    outputs = [
        OutputDataset(namespace=namespace, name=f"models/{version.name}/v{version.version}")
        for version in run.model_versions.all()
    ]
    terminal = {"succeeded": RunState.COMPLETE, "failed": RunState.FAIL, "cancelled": RunState.ABORT}.get(run.status)
    started = (run.started_at or run.created_at).isoformat()
    events = [RunEvent(eventType=RunState.START, eventTime=started, run=ol_run, job=job,
                       producer=settings.OPENLINEAGE_PRODUCER, inputs=inputs, outputs=[])]
    if terminal is not None:
        events.append(RunEvent(eventType=terminal, eventTime=(run.finished_at or run.created_at).isoformat(), run=ol_run,
                               job=job, producer=settings.OPENLINEAGE_PRODUCER, inputs=inputs, outputs=outputs))
    return events


def openlineage_emit_training_run(*, run) -> None:
    client = openlineage_client()
    for event in training_run_openlineage_events(run=run):
        client.emit(event)


def openlineage_events_json(events: list[RunEvent]) -> list[dict]:
    return [json.loads(Serde.to_json(event)) for event in events]


# --- PROV ------------------------------------------------------------------------------


def _new_document() -> ProvDocument:
    doc = ProvDocument()
    doc.add_namespace("pl", PL_NAMESPACE_URI)
    return doc


def _add_dataset(doc: ProvDocument, dataset: Dataset, seen: set[int]) -> str:
    ident = f"pl:dataset-{dataset.pk}"
    if dataset.pk in seen:
        return ident
    seen.add(dataset.pk)
    activity = dataset.processing_activity
    doc.entity(ident, {
        PROV_TYPE: "pl:Dataset", "prov:label": dataset.name, "pl:owner": dataset.owner,
        "pl:source_system": dataset.source_system, "pl:schema": json.dumps(dataset.schema, sort_keys=True),
    })
    pa = f"pl:processing-activity-{activity.pk}"
    doc.entity(pa, {PROV_TYPE: "prov:Plan", "prov:label": activity.name, "pl:lawful_basis": activity.lawful_basis})
    for parent in dataset.parents.select_related("processing_activity").all():
        parent_id = _add_dataset(doc, parent, seen)
        derivation = f"pl:derivation-{dataset.pk}-{parent.pk}"
        doc.activity(derivation, other_attributes={"prov:label": dataset.transformation or "derivation"})
        doc.used(derivation, parent_id)
        doc.wasGeneratedBy(ident, derivation)
        doc.wasDerivedFrom(ident, parent_id, activity=derivation)
    return ident


def _add_snapshot(doc: ProvDocument, snapshot: Snapshot, seen: set[int], *, erasure_detail: bool = False) -> str:
    dataset_id = _add_dataset(doc, snapshot.dataset, seen)
    ident = f"pl:snapshot-{snapshot.pk}"
    doc.entity(ident, {
        PROV_TYPE: "pl:Snapshot", "pl:taken_for": snapshot.taken_for.isoformat(),
        "pl:purpose": snapshot.purpose.code, "pl:lawful_basis": snapshot.lawful_basis,
        "pl:included_count": snapshot.included_count, "pl:included_subjects": snapshot.included_subjects,
        "pl:excluded_counts": json.dumps(snapshot.excluded_counts, sort_keys=True),
        "pl:merkle_root": snapshot.merkle_root,
    })
    creation = f"pl:snapshot-creation-{snapshot.pk}"
    doc.activity(creation, snapshot.created_at, snapshot.completed_at, {"prov:label": f"snapshot {snapshot.pk} creation"})
    doc.used(creation, dataset_id)
    doc.wasGeneratedBy(ident, creation)
    doc.wasDerivedFrom(ident, dataset_id, activity=creation)
    plan = f"pl:processing-activity-{snapshot.dataset.processing_activity_id}"
    if snapshot.requested_by_id:
        agent = f"pl:user-{snapshot.requested_by_id}"
        doc.agent(agent, {PROV_TYPE: "prov:Person", "prov:label": snapshot.requested_by.get_username()})
        doc.wasAssociatedWith(creation, agent, plan)
    else:
        doc.agent("pl:privacy-ledger", {PROV_TYPE: "prov:SoftwareAgent"})
        doc.wasAssociatedWith(creation, "pl:privacy-ledger", plan)
    for amendment in snapshot.amendments.all():
        act = f"pl:snapshot-amendment-{amendment.pk}"
        # Without erasure_detail (roles other than the DPO and the auditor) an amendment
        # says that members were removed and when, not why: "erasure" points at a person.
        attributes: dict[str, Any] = {
            "prov:label": f"{amendment.reason} amendment" if erasure_detail else "membership amendment",
            "pl:records_removed": amendment.records_removed,
            "pl:previous_root": amendment.previous_root, "pl:new_root": amendment.new_root,
        }
        if erasure_detail:
            attributes["pl:reason"] = amendment.reason
        doc.activity(act, amendment.created_at, amendment.created_at, attributes)
        doc.used(act, ident)
    return ident


def _add_training_run(doc: ProvDocument, run, snapshot_ident: str) -> str:
    ident = f"pl:training-run-{run.pk}"
    attrs = {"prov:label": getattr(run, "name", f"training run {run.pk}"), "pl:status": getattr(run, "status", "")}
    doc.activity(ident, getattr(run, "started_at", None), getattr(run, "finished_at", None), attrs)
    doc.used(ident, snapshot_ident)
    return ident


def _add_model_version(doc: ProvDocument, model_version, run_ident: str, snapshot_ident: str) -> str:
    ident = f"pl:model-version-{model_version.pk}"
    attrs: dict[str, Any] = {PROV_TYPE: "pl:ModelVersion", "prov:label": f"{getattr(model_version, 'name', 'model')} v{getattr(model_version, 'version', '')}"}
    for field in ("artifact_sha256", "epsilon", "delta", "status"):
        value = getattr(model_version, field, None)
        if value is not None:
            attrs[f"pl:{field}"] = value
    doc.entity(ident, attrs)
    doc.wasGeneratedBy(ident, run_ident)
    doc.wasDerivedFrom(ident, snapshot_ident, activity=run_ident)
    return ident


def _add_snapshot_and_downstream(
    doc: ProvDocument, snapshot: Snapshot, seen: set[int], *, erasure_detail: bool = False
) -> None:
    snapshot_ident = _add_snapshot(doc, snapshot, seen, erasure_detail=erasure_detail)
    runs, models = trained_on_snapshots([snapshot.pk])
    for run in runs:
        run_ident = _add_training_run(doc, run, snapshot_ident)
        for mv in (m for m in models if m.training_run_id == run.pk):
            _add_model_version(doc, mv, run_ident, snapshot_ident)


def snapshot_prov_document(*, snapshot: Snapshot, erasure_detail: bool = False) -> ProvDocument:
    """The snapshot's upstream lineage and the training runs and models that used it.

    ``erasure_detail`` (for the DPO and the auditor) names why each amendment removed members."""
    doc = _new_document()
    _add_snapshot_and_downstream(doc, snapshot, set(), erasure_detail=erasure_detail)
    return doc


def dataset_prov_document(*, dataset: Dataset, erasure_detail: bool = False) -> ProvDocument:
    """The dataset's ancestry, every snapshot of it and everything trained on them."""
    doc = _new_document()
    seen: set[int] = set()
    _add_dataset(doc, dataset, seen)
    for snapshot in dataset.snapshots.select_related("purpose", "requested_by", "dataset__processing_activity").order_by("pk"):
        _add_snapshot_and_downstream(doc, snapshot, seen, erasure_detail=erasure_detail)
    return doc


def model_prov_document(*, model_version, erasure_detail: bool = False) -> ProvDocument:
    """Everything upstream of a model version, down to datasets and processing activities."""
    doc = _new_document()
    run = model_version.training_run
    snapshot = Snapshot.objects.select_related("dataset__processing_activity", "purpose", "requested_by").get(pk=run.snapshot_id)
    snapshot_ident = _add_snapshot(doc, snapshot, set(), erasure_detail=erasure_detail)
    run_ident = _add_training_run(doc, run, snapshot_ident)
    _add_model_version(doc, model_version, run_ident, snapshot_ident)
    return doc


def prov_json(doc: ProvDocument) -> str:
    return doc.serialize(format="json")
