"""No raw identifier of a person anywhere in the database (Art. 4(5), Art. 32(1)(a)).

Transactional (real commits); the default taxonomy is reloaded first, because another
transactional test may have flushed what the data migration created.

Consents, consent-status questions and an Art. 30 record go in through the API with raw
emails; then every text and JSON column of every table is read back and searched.
"""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.db import connection, models

from tests.governance.consent_helpers import at, event

IDENTIFIERS = [f"Patient.{i:03d}@Hospital.example" for i in range(12)] + ["NHS-943-476-5919"]
TEXT_FIELDS = (models.CharField, models.TextField, models.JSONField, models.BinaryField)


@pytest.fixture
def default_taxonomy(transactional_db):
    importlib.import_module("governance.migrations.0003_default_taxonomy").load_defaults(apps, None)


def _text_columns():
    for model in apps.get_models(include_auto_created=True):
        table = model._meta.db_table
        columns = [f.column for f in model._meta.concrete_fields if isinstance(f, TEXT_FIELDS)]
        if columns:
            yield table, columns


def _find(needles: list[str]) -> list[str]:
    found = []
    lowered = [n.casefold() for n in needles]
    existing = set(connection.introspection.table_names())
    with connection.cursor() as cur:
        for table, columns in _text_columns():
            if table not in existing:
                continue
            quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
            cur.execute(f"SELECT {quoted} FROM {connection.ops.quote_name(table)}")
            for row in cur.fetchall():
                for column, value in zip(columns, row, strict=True):
                    if value is None:
                        continue
                    text = (bytes(value).decode("latin-1") if isinstance(value, bytes | memoryview) else str(value))
                    folded = text.casefold()
                    found.extend(f"{table}.{column}: {n}" for n in lowered if n in folded)
    return found


@pytest.mark.django_db(transaction=True)
def test_no_table_holds_a_raw_identifier_after_ingest_through_the_api(default_taxonomy, dpo_client, ml_client, auditor_client):
    batch = [
        event(identifier, "ml.training.clinical_risk", "given", at(i),
              evidence={"form_url": "https://portal.example/consent", "ip": "198.51.100.23",
                        "user_agent": "Mozilla/5.0", "source_system": "portal"})
        for i, identifier in enumerate(IDENTIFIERS)
    ]
    batch.append(event(IDENTIFIERS[0], "ml.training.clinical_risk", "withdrawn", at(30)))
    response = dpo_client.post("/api/v1/consent-events/", batch, format="json")
    assert response.status_code == 201, response.content
    assert dpo_client.post("/api/v1/consent-events/", batch, format="json").json()["already_present"] == len(batch)
    # A refused batch must not leave the identifier behind either (e.g. in an error log table).
    refused = dpo_client.post(
        "/api/v1/consent-events/", [event("Someone.Else@Example.org", "no.such.purpose", "given", at(0))], format="json"
    )
    assert refused.status_code == 400
    status = ml_client.post(
        "/api/v1/consent-status/",
        {"purpose": "ml.training.clinical_risk", "subjects": [*IDENTIFIERS, "Unknown.Person@Example.org"]},
        format="json",
    )
    assert status.status_code == 200
    assert len(status.json()["allowed"]) == len(IDENTIFIERS) - 1
    for client in (dpo_client, auditor_client):
        listing = client.get("/api/v1/consent-events/", {"limit": 100})
        assert listing.status_code == 200
        assert not any(n.casefold() in listing.content.decode().casefold() for n in IDENTIFIERS)

    assert _find([*IDENTIFIERS, "Someone.Else@Example.org", "Unknown.Person@Example.org"]) == []


@pytest.mark.django_db(transaction=True)
def test_the_scan_would_find_an_identifier_if_one_were_stored(dpo_client):
    # Guard against a scan that cannot fail: a raw value put in a text column is found.
    from governance.services import audit_event_record

    audit_event_record(actor="test", action="test.leak", details={"note": IDENTIFIERS[3]})
    assert _find(IDENTIFIERS) == [f"governance_auditevent.details: {IDENTIFIERS[3].casefold()}"]
