"""Datasets and their records: create a dataset, ingest rows (JSON or CSV) set-based with
COPY on PostgreSQL, every subject pseudonymised on arrival; all or nothing, naming each bad row."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from governance.models import ProcessingActivity
from governance.pseudonymisation import pseudonymise_many
from governance.services import ServiceError, audit_event_record, data_subject_ensure_many
from provenance.models import (
    DataRecord,
    Dataset,
)
from provenance.schema import RowError, content_hash, record_validate, schema_validate

MAX_ERRORS_REPORTED = 20


def _max_rows() -> int:
    return settings.PROVENANCE_MAX_ROWS_PER_REQUEST


# --- Datasets --------------------------------------------------------------------------


@transaction.atomic
def dataset_create(
    *,
    name: str,
    owner: str,
    processing_activity: ProcessingActivity,
    schema: Any,
    description: str = "",
    source_system: str = "",
    parents: Iterable[Dataset] = (),
    transformation: str = "",
    actor: Any = None,
) -> Dataset:
    clean_schema = schema_validate(schema)
    parents = list(parents)
    if parents and not transformation.strip():
        raise ServiceError("A derived dataset must describe the transformation from its parents.", field="transformation")
    if transformation.strip() and not parents:
        raise ServiceError("A transformation is described only for a dataset derived from parents.", field="parents")
    if Dataset.objects.filter(name=name).exists():
        raise ServiceError(f"A dataset named {name!r} already exists.", field="name")
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                name=name, description=description, owner=owner, processing_activity=processing_activity,
                source_system=source_system, schema=clean_schema, transformation=transformation,
                created_by=actor if getattr(actor, "pk", None) else None,
            )
    except IntegrityError:
        raise ServiceError(f"A dataset named {name!r} already exists.", field="name")
    if parents:
        dataset.parents.set(parents)
    audit_event_record(
        actor=actor, action="dataset.created", object_type="dataset", object_id=dataset.pk,
        details={
            "name": name, "processing_activity": processing_activity.pk,
            "features": len(clean_schema["features"]), "parents": [p.pk for p in parents],
        },
    )
    return dataset


# --- Records ---------------------------------------------------------------------------


def _row_error(errors: list[dict], row: int, field: str, reason: str) -> None:
    if len(errors) < MAX_ERRORS_REPORTED:
        errors.append({"row": row, "field": field, "reason": reason})


def _raise_row_errors(errors: list[dict], total_bad: int) -> None:
    first = errors[0]
    raise ServiceError(
        f"row {first['row']}, field '{first['field']}': {first['reason']}. Nothing was stored "
        f"({total_bad} row(s) with errors; the first {len(errors)} are listed).",
        field="rows", errors=errors,
    )


def _validate_rows(rows: Any, schema: dict, *, from_text: bool) -> tuple[list[str], list[tuple[dict, Any]]]:
    if not isinstance(rows, list):
        raise ServiceError("Expected a JSON list of records or a CSV body.", field="rows")
    if not rows:
        raise ServiceError("No records given.", field="rows")
    if len(rows) > _max_rows():
        raise ServiceError(f"At most {_max_rows()} rows per request; got {len(rows)}.", field="rows")
    identifiers: list[str] = []
    clean: list[tuple[dict, Any]] = []
    errors: list[dict] = []
    bad = 0
    label_name = schema["label"]["name"]
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            bad += 1
            _row_error(errors, number, "row", "expected an object with subject, features and label")
            continue
        unknown = sorted(set(row) - {"subject", "features", "label"})
        if unknown:
            bad += 1
            _row_error(errors, number, unknown[0], "unknown key; a record has subject, features and label")
            continue
        subject = row.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            bad += 1
            _row_error(errors, number, "subject", "the subject's external identifier is required")
            continue
        if "label" not in row:
            bad += 1
            _row_error(errors, number, label_name, "the label is missing")
            continue
        try:
            clean.append(record_validate(row.get("features"), row.get("label"), schema, from_text=from_text))
        except RowError as exc:
            bad += 1
            _row_error(errors, number, exc.field, exc.reason)
            continue
        identifiers.append(subject)
    if errors:
        _raise_row_errors(errors, bad)
    return identifiers, clean


def records_parse_csv(*, text: str, schema: dict) -> list[dict]:
    """Turn a CSV body (subject column, one column per feature, the label column) into rows.

    Values stay text here; validation converts them to the declared types. Row numbers in
    errors count data rows from 1 (the header is not a row).
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ServiceError("The CSV body is empty.", field="rows")
    except csv.Error as exc:
        raise ServiceError(f"The CSV header cannot be read: {exc}.", field="rows")
    # Spreadsheet exports often start with a byte-order mark.
    header = [h.strip().lstrip("\ufeff") for h in header]
    features = [f["name"] for f in schema["features"]]
    label = schema["label"]["name"]
    expected = {"subject", label, *features}
    unknown = [h for h in header if h not in expected]
    if unknown:
        raise ServiceError(
            f"Unknown column {unknown[0]!r}; the columns are 'subject', the features ({', '.join(features)}) and the label {label!r}.",
            field=unknown[0], column=unknown[0],
        )
    missing = [h for h in ["subject", *features, label] if h not in header]
    if missing:
        raise ServiceError(f"Missing column {missing[0]!r}.", field=missing[0], column=missing[0])
    if len(set(header)) != len(header):
        raise ServiceError("A column appears twice in the CSV header.", field="rows")
    position = {name: header.index(name) for name in header}
    rows: list[dict] = []
    errors: list[dict] = []
    bad = 0
    number = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            number += 1
            bad += 1
            _row_error(errors, number, "row", f"broken CSV (line {reader.line_num}): {exc}")
            break  # the reader cannot resynchronise after a broken quote
        number += 1
        if not values:
            bad += 1
            _row_error(errors, number, "row", f"empty line (line {reader.line_num})")
            continue
        if len(values) != len(header):
            bad += 1
            _row_error(
                errors, number, "row", f"expected {len(header)} columns, got {len(values)} (line {reader.line_num})"
            )
            continue
        rows.append({
            "subject": values[position["subject"]],
            "features": {name: values[position[name]] for name in features},
            "label": values[position[label]],
        })
        if number > _max_rows():
            raise ServiceError(f"At most {_max_rows()} rows per request.", field="rows")
    if errors:
        _raise_row_errors(errors, bad)
    return rows


def _copy_records(rows: list[tuple[int, int, str, str | None, str, datetime]]) -> None:
    """PostgreSQL COPY of (dataset_id, subject_id, features, label, content_hash, ingested_at)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows(rows)
    buffer.seek(0)
    table = DataRecord._meta.db_table
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(
            f"COPY {table} (dataset_id, subject_id, features, label, content_hash, ingested_at) FROM STDIN WITH (FORMAT csv)",
            buffer,
        )


def _ingest(*, dataset: Dataset, rows: Any, actor: Any, from_text: bool, source_format: str) -> dict:
    identifiers, clean = _validate_rows(rows, dataset.schema, from_text=from_text)
    try:
        pseudonyms = pseudonymise_many(identifiers)
    except (TypeError, ValueError) as exc:
        raise ServiceError(f"A subject identifier is invalid: {exc}.", field="subject")
    ingested_at = timezone.now()
    with transaction.atomic():
        subject_ids = data_subject_ensure_many(pseudonyms=pseudonyms)
        if connection.vendor == "postgresql":
            _copy_records([
                (
                    dataset.pk, subject_ids[p],
                    json.dumps(features, ensure_ascii=False),
                    None if label is None else json.dumps(label, ensure_ascii=False),
                    content_hash(features, label), ingested_at.isoformat(),
                )
                for p, (features, label) in zip(pseudonyms, clean, strict=True)
            ])
        else:
            DataRecord.objects.bulk_create(
                [
                    DataRecord(
                        dataset_id=dataset.pk, subject_id=subject_ids[p], features=features, label=label,
                        content_hash=content_hash(features, label), ingested_at=ingested_at,
                    )
                    for p, (features, label) in zip(pseudonyms, clean, strict=True)
                ],
                batch_size=2000,
            )
        result = {
            "dataset": dataset.pk,
            "records_created": len(clean),
            "subjects": len(subject_ids),
            "ingested_at": ingested_at.isoformat(),
        }
        audit_event_record(
            actor=actor, action="dataset.records_ingested", object_type="dataset", object_id=dataset.pk,
            details={"records": len(clean), "subjects": len(subject_ids), "format": source_format},
        )
    return result


def dataset_records_ingest(*, dataset: Dataset, rows: list[dict], actor: Any) -> dict:
    """Validate every row first, then store all of them or none.

    rows: ``[{"subject": external id, "features": {...}, "label": ...}]``. Subjects are
    pseudonymised on arrival and created in bulk; records are inserted in bulk (COPY on
    PostgreSQL); one audit event records the batch.
    """
    return _ingest(dataset=dataset, rows=rows, actor=actor, from_text=False, source_format="json")


def dataset_records_ingest_csv(*, dataset: Dataset, text: str, actor: Any) -> dict:
    rows = records_parse_csv(text=text, schema=dataset.schema)
    return _ingest(dataset=dataset, rows=rows, actor=actor, from_text=True, source_format="csv")
