"""One versioned identifier normalisation: invisible characters never split a person in two.

"alice\\u200b@example.org" (a zero-width space pasted from a web page) and "alice@example.org"
are one person, through consent ingest and the consent-status lookup alike; the version of the
normalisation is recorded beside each pseudonym, and subjects from before it are version 1.
"""

from __future__ import annotations

import unicodedata

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from governance.models import ConsentEvent, DataSubject
from governance.pseudonymisation import (
    INVISIBLE_CODE_POINTS,
    NORMALISATION_VERSION,
    IdentifierError,
    normalise_identifier,
    pseudonymise,
    pseudonymise_many,
)
from tests.governance.consent_helpers import at, event

CLINICAL = "ml.training.clinical_risk"
ALICE = "alice@example.org"
# The same address as a person types it, pasted from a page, or produced by a source system.
ALICE_VARIANTS = [
    "alice\u200b@example.org",  # zero-width space
    "\ufeffalice@example.org",  # byte-order mark at the start of a CSV cell
    "al\u00adice@example.org",  # soft hyphen
    "ali\u200dce@exam\u200cple.org",  # zero-width joiner and non-joiner
    "\u202aalice@example.org\u202c",  # left-to-right embedding ... pop
    "\u2066alice@example.org\u2069",  # left-to-right isolate ... pop
    "alice@example.org\u200e",  # left-to-right mark
    "alice\u2060@example.org\u180e",  # word joiner, Mongolian vowel separator
    " ALICE@EXAMPLE.ORG ",  # case and surrounding spaces (version 1 already folded these)
    "ａｌｉｃｅ＠ｅｘａｍｐｌｅ．ｏｒｇ",  # full-width forms (NFKC)
]


@pytest.mark.django_db
@pytest.mark.parametrize("variant", ALICE_VARIANTS)
def test_an_invisible_variant_of_an_identifier_is_the_same_person_through_the_api(dpo_client, ml_client, variant):
    response = dpo_client.post("/api/v1/consent-events/", event(variant, CLINICAL, "given", at(0)), format="json")
    assert response.status_code == 201, response.content
    status = ml_client.post(
        "/api/v1/consent-status/",
        {"purpose": CLINICAL, "subjects": [ALICE, variant, "bob@example.org"]},
        format="json",
    )
    assert status.status_code == 200, status.content
    assert status.json()["allowed"] == [0, 1]  # bob, at position 2, gave no consent
    subject = DataSubject.objects.get()
    assert subject.pseudonym == pseudonymise(ALICE)
    assert subject.normalisation_version == NORMALISATION_VERSION == 2


@pytest.mark.django_db
def test_a_batch_of_every_variant_records_one_subject_with_every_event(dpo_client):
    batch = [event(v, CLINICAL, "given", at(i), event_id=f"variant-{i}") for i, v in enumerate([ALICE, *ALICE_VARIANTS])]
    response = dpo_client.post("/api/v1/consent-events/", batch, format="json")
    assert response.status_code == 201, response.content
    assert DataSubject.objects.count() == 1
    assert ConsentEvent.objects.filter(subject__pseudonym=pseudonymise(ALICE)).count() == len(batch)


@pytest.mark.django_db
def test_an_identifier_of_invisible_characters_only_is_a_400_naming_the_field(dpo_client, ml_client):
    response = dpo_client.post(
        "/api/v1/consent-events/", [event(ALICE, CLINICAL, "given", at(0)), event("\u200b\ufeff", CLINICAL, "given", at(1))],
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "visible character" in response.json()["events[1].subject"][0]
    assert not ConsentEvent.objects.exists()
    status = ml_client.post(
        "/api/v1/consent-status/", {"purpose": CLINICAL, "subjects": [ALICE, "\u200b"]}, format="json"
    )
    assert status.status_code == 400, status.content
    assert "visible character" in status.json()["subjects[1]"][0]
    erasure = dpo_client.post("/api/v1/erasure-requests/", {"subject": "\u2060", "ground": "17_1_a"}, format="json")
    assert erasure.status_code == 400, erasure.content
    assert "subject" in erasure.json()


def test_normalise_identifier_is_versioned_and_version_1_is_the_old_rule():
    assert normalise_identifier("alice\u200b@Example.org ", version=1) == "alice\u200b@example.org"
    assert normalise_identifier("alice\u200b@Example.org ", version=2) == "alice@example.org"
    assert normalise_identifier("alice\u200b@Example.org ") == "alice@example.org"  # current = 2
    assert pseudonymise("alice\u200b@example.org", version=1) != pseudonymise("alice\u200b@example.org")
    with pytest.raises(ValueError, match="unknown normalisation version"):
        normalise_identifier(ALICE, version=3)


@pytest.mark.parametrize(
    "identifier",
    ["alice@example.org", " Bob@Example.ORG", "MRN-000123", "Ærøskøbing-7", "straße@bücher.de", "ｆｕｌｌ＠ｗｉｄｔｈ",
     "ﬁle-Ⅻ", "İstanbul", "患者-0042", "e\u0301", "café@x.org"],
)
def test_an_identifier_without_invisible_characters_keeps_its_version_1_pseudonym(identifier):
    # Why subjects recorded before version 2 are still found by the current lookup.
    assert normalise_identifier(identifier, version=1) == normalise_identifier(identifier, version=2)
    assert pseudonymise(identifier, version=1) == pseudonymise(identifier)


def test_characters_an_invisible_one_separated_compose_once_it_is_removed():
    assert normalise_identifier("re\u200d\u0301my@x.org") == normalise_identifier("r\u00e9my@x.org")


def test_every_format_character_of_this_unicode_version_is_stripped():
    # A failure here after a Python upgrade means the Unicode database gained invisible
    # characters: strip them under a new NORMALISATION_VERSION, never by editing version 2.
    missing = [
        f"U+{cp:04X}" for cp in range(0x110000)
        if unicodedata.category(chr(cp)) == "Cf" and cp not in INVISIBLE_CODE_POINTS
    ]
    assert missing == [], f"Unicode {unicodedata.unidata_version}"
    # No visible character normalises (NFKC, case folding) into an invisible one, so removing
    # them before NFKC leaves none in any pseudonymised text.
    produced = [
        f"U+{cp:04X}" for cp in range(0x110000)
        if cp not in INVISIBLE_CODE_POINTS and not 0xD800 <= cp <= 0xDFFF
        and any(ord(c) in INVISIBLE_CODE_POINTS for c in unicodedata.normalize("NFKC", chr(cp)).casefold())
    ]
    assert produced == []


def test_pseudonymise_many_is_pseudonymise_of_each_and_names_the_position_it_refuses():
    identifiers = [ALICE, *ALICE_VARIANTS, "bob@example.org"]
    assert pseudonymise_many(identifiers) == [pseudonymise(i) for i in identifiers]
    with pytest.raises(IdentifierError) as refused:
        pseudonymise_many([ALICE, "\u00ad \u200b"])
    assert refused.value.field == "subjects[1]"


@pytest.mark.django_db(transaction=True)
def test_subjects_from_before_the_version_was_recorded_are_version_1_and_new_ones_current():
    before = ("governance", "0009_work_dispatch_and_lease")
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([before])
        old = executor.loader.project_state([before]).apps
        old.get_model("governance", "DataSubject").objects.create(pseudonym=pseudonymise("old@example.org"))
        executor = MigrationExecutor(connection)
        executor.migrate([("governance", "0010_pseudonym_normalisation_version")])
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    assert DataSubject.objects.get(pseudonym=pseudonymise("old@example.org")).normalisation_version == 1
    # A set-based insert that does not name the column (as the benchmarks' generators do) gets
    # the current version from the database's default.
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO governance_datasubject (pseudonym, reference, created_at) VALUES (%s, %s, %s)",
            ["f" * 64, "0" * 32 if connection.vendor == "sqlite" else "00000000-0000-0000-0000-000000000000",
             "2025-01-01 00:00:00+00:00"],
        )
    assert DataSubject.objects.get(pseudonym="f" * 64).normalisation_version == NORMALISATION_VERSION
    DataSubject.objects.filter(pseudonym__in=["f" * 64, pseudonymise("old@example.org")]).delete()


@pytest.mark.django_db
def test_the_admin_finds_a_person_by_an_invisible_variant_and_shows_the_version(client, dpo_client):
    from django.contrib.auth import get_user_model

    dpo_client.post("/api/v1/consent-events/", event(ALICE, CLINICAL, "given", at(0)), format="json")
    client.force_login(get_user_model().objects.create_superuser("dpo-admin", "dpo@example.org", "pw"))
    subject = DataSubject.objects.get()
    found = client.get("/admin/governance/datasubject/", {"q": "alice\u200b@example.org"})
    assert found.status_code == 200
    assert subject.pseudonym in found.content.decode()
    nothing = client.get("/admin/governance/datasubject/", {"q": "\u200b\u2060"})
    assert nothing.status_code == 200 and subject.pseudonym not in nothing.content.decode()
    page = client.get(f"/admin/governance/datasubject/{subject.pk}/change/")
    assert page.status_code == 200
    assert "Normalisation version" in page.content.decode()


@pytest.mark.django_db
def test_a_subject_recorded_under_version_1_with_an_invisible_character_is_still_found(dpo_client):
    """Erasure and the person search find a row pseudonymised before invisible characters were
    stripped, when the person gives the identifier as it was recorded then."""
    from rights.services import erasure_request_receive

    identifier = "dora\u200b@example.org"
    legacy = DataSubject.objects.create(pseudonym=pseudonymise(identifier, version=1), normalisation_version=1)
    request = erasure_request_receive(identifier=identifier, ground="17_1_b", actor="t")
    assert request.subject_id == legacy.pk and request.data_held_at_receipt
    impact = dpo_client.post("/api/v1/subjects/impact/", {"subject": identifier}, format="json").json()
    assert impact["found"] and impact["subject_ref"] == str(legacy.reference)
    # The current version's row, when there is one, is the person's subject.
    current = DataSubject.objects.create(pseudonym=pseudonymise(identifier))
    from governance.selectors import data_subject_find

    assert data_subject_find(identifier=identifier) == current
