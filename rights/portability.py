"""The data a person may take with them (GDPR Art. 20): their records, as JSON and CSV.

Read-only. Art. 20(1) covers data the person provided, processed on consent (Art. 6(1)(a)
or 9(2)(a)) or on a contract (Art. 6(1)(b)), by automated means. So only records in
datasets whose processing activity rests on one of those bases are exported; a dataset
derived by the controller from others (it has parents) holds data the controller created,
not data the person provided (WP29 guidelines on portability, WP242 rev.01), and is left
out too. Every dataset left out is listed with its reason.

The format (``PORTABILITY_FORMAT``, documented in docs/rights.md):

- JSON: ``{"format", "generated_at", "subject_ref", "datasets": [{"dataset", "processing_activity",
  "lawful_basis", "columns": [{"name", "type", "role"}], "records": [{"ingested_at", "values": {column:
  value}}]}], "not_included": [{"dataset", "reason"}]}``; values keep their JSON types (numbers,
  booleans, strings, null), keys follow the schema order.
- CSV: one file per dataset, named ``<dataset>.csv``; the header is ``ingested_at`` then the
  columns in schema order; booleans are ``true``/``false``, a missing value is empty,
  numbers are written as JSON writes them (``repr`` of a float: it reads back exactly).
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from datetime import datetime
from typing import Any

from django.utils import timezone

from governance.models import DataSubject
from governance.services import ServiceConflict
from rights.access import (
    PORTABILITY_BASES,
    _basis_label,
    _datasets,
    _iso,
    _ordered_values,
    _records_of,
    _schema_columns,
)

PORTABILITY_FORMAT = "privacy-ledger/portability-export/v1"

REFUSAL_ARTICLE = "Art. 20(1)"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def _csv_name(dataset: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset).strip("._") or "dataset"
    name, n = f"{base}.csv", 2
    while name in taken:
        name, n = f"{base}-{n}.csv", n + 1
    taken.add(name)
    return name


def portability_csv(export: dict[str, Any]) -> dict[str, str]:
    """One CSV text per dataset of ``export`` (see the module docstring), by file name."""
    files: dict[str, str] = {}
    taken: set[str] = set()
    for dataset in export["datasets"]:
        columns = [c["name"] for c in dataset["columns"]]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["ingested_at", *columns])
        for record in dataset["records"]:
            writer.writerow([record["ingested_at"], *(_csv_value(record["values"].get(c)) for c in columns)])
        files[_csv_name(dataset["dataset"], taken)] = out.getvalue()
    return files


def portability_export(*, subject: DataSubject, generated_at: datetime | None = None) -> dict[str, Any]:
    """The person's portable records as the JSON export (``portability_csv`` turns it into CSV files).

    Refused with ServiceConflict (409, field ``subject``) naming Art. 20(1) when the person
    has no record in a dataset processed on consent or contract.
    """
    records = _records_of(subject)
    datasets = _datasets(r["dataset_id"] for r in records)
    derived = {d.pk for d in datasets.values() if d.parents.exists()}
    eligible = {
        pk for pk, d in datasets.items() if d.processing_activity.lawful_basis in PORTABILITY_BASES and pk not in derived
    }
    not_included = []
    for pk, d in sorted(datasets.items(), key=lambda kv: kv[1].name):
        if pk in eligible:
            continue
        basis = d.processing_activity.lawful_basis
        reason = (
            "derived by the controller from other datasets: not data you provided" if pk in derived
            else f"processed on {_basis_label(basis)}, not on consent or contract"
        )
        not_included.append({"dataset": d.name, "lawful_basis": basis, "reason": reason})
    if not eligible:
        bases = sorted({d.processing_activity.lawful_basis for d in datasets.values()})
        held = (f"your records are processed on {', '.join(_basis_label(b) for b in bases)}" if bases
                else "we hold no records you provided")
        raise ServiceConflict(
            f"{REFUSAL_ARTICLE}: the right to data portability covers data you provided that we process on "
            f"consent (Art. 6(1)(a)) or a contract (Art. 6(1)(b)); {held}. Your right of access (Art. 15) "
            "still gives you a copy of all your data.",
            field="subject", article=REFUSAL_ARTICLE, lawful_bases=bases, not_included=not_included,
        )
    out: list[dict[str, Any]] = []
    for pk in sorted(eligible, key=lambda k: datasets[k].name):
        d = datasets[pk]
        out.append({
            "dataset": d.name,
            "processing_activity": d.processing_activity.name,
            "lawful_basis": d.processing_activity.lawful_basis,
            "columns": _schema_columns(d.schema),
            "records": [
                {"ingested_at": _iso(r["ingested_at"]), "values": _ordered_values(d.schema, r["features"], r["label"])}
                for r in records if r["dataset_id"] == pk
            ],
        })
    export = {
        "format": PORTABILITY_FORMAT,
        "generated_at": _iso(generated_at or timezone.now()),
        "article": "Art. 20",
        "subject_ref": str(subject.reference),
        "data_held": True,
        "datasets": out,
        "not_included": not_included,
    }
    return export


def portability_zip(export: dict[str, Any]) -> bytes:
    """The CSV form of ``export`` as given to the person: a ZIP of one CSV per dataset
    (portability_csv) and the JSON export itself, so the two never disagree."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in portability_csv(export).items():
            archive.writestr(name, text)
        archive.writestr("export.json", json.dumps(export, indent=2, ensure_ascii=False))
    return buffer.getvalue()
