"""Rectification (Art. 16): a corrected version of a person's records, the old one kept.

A record's Merkle leaf hashes its id and content (``provenance.merkle``), so correcting a
row in place would break every snapshot holding it. Instead each corrected record gets a
new row (``supersedes`` the old one) with the full corrected content and the old row's
ingestion moment (retention runs from collection), and the old row is stamped
``superseded_at``: snapshots taken before keep it and still verify, no new snapshot takes
it (``snapshots._membership_select``), and it is deleted with its person's erasure or by
the retention purge. Models trained on it are flagged by mlops on ``records_rectified``.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from governance.models import DataSubject
from governance.services import ServiceConflict, ServiceError, audit_event_record
from provenance.models import DataRecord, Dataset
from provenance.schema import RowError, _coerce, content_hash, record_validate

MAX_CORRECTIONS = 1000


def _resolve(model, value: Any, field: str):
    if isinstance(value, model):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceError(f"{field}: expected a {model.__name__} or its id", field=field)
    found = model.objects.filter(pk=value).first()
    if found is None:
        raise ServiceError(f"{field}: no {model.__name__} {value}", field=field)
    return found


def _field_specs(schema: dict) -> dict[str, tuple[str, dict]]:
    """{name: ("feature" | "label", spec)}: what a correction may name."""
    specs = {spec["name"]: ("feature", spec) for spec in schema["features"]}
    specs[schema["label"]["name"]] = ("label", schema["label"])
    return specs


def record_corrections_validate(*, corrections: Any, dataset: Dataset, subject: DataSubject) -> list[tuple[DataRecord, dict, Any, list]]:
    """[(old record, corrected features, corrected label, fields changed)], or a 400 naming
    the first field at fault. Reads the records FOR UPDATE: two rectifications of one
    record queue, and the second finds it superseded."""
    if not isinstance(corrections, list) or not corrections:
        raise ServiceError('corrections: give a list of {"record": id, "values": {field: value}}', field="corrections")
    if len(corrections) > MAX_CORRECTIONS:
        raise ServiceError(f"corrections: at most {MAX_CORRECTIONS} records per rectification", field="corrections")
    specs = _field_specs(dataset.schema)
    ids: list[int] = []
    for i, correction in enumerate(corrections):
        where = f"corrections[{i}]"
        if not isinstance(correction, dict) or set(correction) - {"record", "values"}:
            raise ServiceError(f'{where}: expected {{"record": id, "values": {{field: value}}}}', field=where)
        record_id = correction.get("record")
        if isinstance(record_id, bool) or not isinstance(record_id, int):
            raise ServiceError(f"{where}.record: expected a record id (integer)", field=f"{where}.record")
        if record_id in ids:
            raise ServiceError(f"{where}.record: record {record_id} is corrected twice", field=f"{where}.record")
        ids.append(record_id)
        values = correction.get("values")
        if not isinstance(values, dict) or not values:
            raise ServiceError(f"{where}.values: give at least one field and its corrected value", field=f"{where}.values")
        for name in values:
            if name not in specs:
                raise ServiceError(
                    f"{where}.values.{name}: not in the dataset's schema (fields: {', '.join(specs)})",
                    field=f"{where}.values.{name}",
                )
    records = {r.pk: r for r in DataRecord.objects.select_for_update().filter(pk__in=ids)}
    out = []
    for i, correction in enumerate(corrections):
        where = f"corrections[{i}]"
        record = records.get(correction["record"])
        # One sentence for "no such record" and "someone else's": the answer must not tell
        # a caller which record ids belong to other people.
        if record is None or record.subject_id != subject.pk or record.dataset_id != dataset.pk:
            raise ServiceError(
                f"{where}.record: record {correction['record']} is not one of this person's records in dataset "
                f"{dataset.pk}",
                field=f"{where}.record",
            )
        if record.superseded_at is not None:
            current = DataRecord.objects.filter(supersedes_id=record.pk).values_list("pk", flat=True).first()
            raise ServiceConflict(
                f"{where}.record: record {record.pk} was rectified already; its current version is record {current}",
                field=f"{where}.record", current_record=current,
            )
        features, label = dict(record.features), record.label
        changed = []
        for name, value in correction["values"].items():
            kind, spec = specs[name]
            try:
                clean = _coerce(value, spec, from_text=False)
            except RowError as exc:
                raise ServiceError(
                    f"{where}.values.{name}: {exc.reason} (the schema's type is {spec['type']})",
                    field=f"{where}.values.{name}",
                ) from None
            current_value = label if kind == "label" else features.get(name)
            if clean != current_value or type(clean) is not type(current_value):
                changed.append(name)
            if kind == "label":
                label = clean
            else:
                features[name] = clean
        # The whole corrected content goes through ingestion's path, so its hash is the one
        # ingestion (and snapshot_verify) would compute for it.
        features, label = record_validate(features, label, dataset.schema)
        if not changed:
            raise ServiceError(
                f"{where}.values: these are the record's current values; nothing to rectify", field=f"{where}.values"
            )
        out.append((record, features, label, changed))
    return out


def record_rectify(
    *, subject: DataSubject | int, dataset: Dataset | int, corrections: list[dict], reason: str, actor: Any = None
) -> dict[str, Any]:
    """Write a corrected version of each of ``subject``'s records named in ``corrections``
    (``[{"record": id, "values": {feature or label name: corrected value}}]``; fields not
    named keep their value), all or none, audited; returns the old and new record ids.

    Refuses (400, naming ``corrections[i].values.<name>``) a name not in the dataset's
    schema or a value not of its type, a record not the person's in this dataset
    (``corrections[i].record``), values that change nothing; (409) a record already
    rectified (the answer names its current version). On commit ``records_rectified``
    tells mlops (models trained on the old versions become stale) and whoever records the
    Art. 19 notices (the result's ``recipients``).
    """
    if not isinstance(reason, str) or not reason.strip():
        raise ServiceError("reason: say why the records are rectified", field="reason")
    dataset = _resolve(Dataset, dataset, "dataset")
    subject = _resolve(DataSubject, subject, "subject")
    with transaction.atomic():
        checked = record_corrections_validate(corrections=corrections, dataset=dataset, subject=subject)
        now = timezone.now()
        new_records = DataRecord.objects.bulk_create([
            DataRecord(
                dataset_id=dataset.pk, subject_id=subject.pk, features=features, label=label,
                content_hash=content_hash(features, label), ingested_at=old.ingested_at, supersedes=old,
            )
            for old, features, label, _ in checked
        ])
        if any(r.pk is None for r in new_records):  # a backend that returns no ids from bulk_create
            by_old = dict(
                DataRecord.objects.filter(supersedes_id__in=[old.pk for old, *_ in checked]).values_list("supersedes_id", "pk")
            )
            new_ids = [by_old[old.pk] for old, *_ in checked]
        else:
            new_ids = [r.pk for r in new_records]
        old_ids = [old.pk for old, *_ in checked]
        # DataRecord is not an ImmutableModel: stamping the old version is the one change
        # made to it, and its content (what its leaves hash) is untouched.
        DataRecord.objects.filter(pk__in=old_ids).update(superseded_at=now)
        fields = sorted({name for *_, changed in checked for name in changed})
        activity = dataset.processing_activity
        recipients = list(activity.recipients or [])
        records = [
            {"old": old.pk, "new": new_id, "fields": changed}
            for (old, _, _, changed), new_id in zip(checked, new_ids, strict=True)
        ]
        # Field names only: the corrected values are personal data and stay in the records.
        audit_event_record(
            actor=actor, action="records.rectified", object_type="dataset", object_id=dataset.pk,
            details={"subject": subject.pk, "records": records, "fields": fields, "reason": reason.strip()[:1000],
                     "processing_activity": activity.pk, "recipients": len(recipients)},
        )
        from provenance.signals import records_rectified, send_on_commit

        send_on_commit(
            records_rectified, dataset_id=dataset.pk, processing_activity_id=activity.pk, subject_id=subject.pk,
            old_record_ids=old_ids, new_record_ids=new_ids, fields=fields, recipients=recipients, actor=actor,
        )
    return {
        "dataset": dataset.pk, "subject": subject.pk, "rectified_at": now.isoformat(), "records": records,
        "fields": fields, "processing_activity": activity.pk, "recipients": recipients,
    }
