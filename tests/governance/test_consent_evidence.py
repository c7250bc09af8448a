"""Consent evidence is validated per key and decoded before the identifier scan (Art. 4(5)).

The evidence of a consent event (the form's URL, a truncated IP address, the user agent, the
source system, a note) is what an auditor reads to see how consent was given; it must never
carry a raw identifier of a person, however the source system encoded it.
"""

from __future__ import annotations

import json

import pytest

from governance.models import AuditEvent, ConsentEvent
from tests.governance.consent_helpers import at, event

CLINICAL = "ml.training.clinical_risk"
URL = "/api/v1/consent-events/"
BOB = "bob@example.com"


def _ingest(client, evidence: dict, subject: str = BOB, **extra):
    return client.post(URL, [event(subject, CLINICAL, "given", at(0), evidence=evidence, **extra)], format="json")


def _refused(response, key: str) -> str:
    assert response.status_code == 400, response.content
    body = response.json()
    assert f"events[0].evidence.{key}" in body, body
    assert not ConsentEvent.objects.exists()
    return body[f"events[0].evidence.{key}"][0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "form_url",
    [
        "https://portal.example/consent?email=bob%40example.com",  # the attack
        "https://portal.example/consent?email=bob%2540example.com",  # encoded twice
        "https://portal.example/consent?ref=x#bob%40example.com",  # in the fragment
        "https://portal.example/people/bob%40example.com/consent",  # in the path, which is stored
        "https://portal.example/consent?invited=carol%40example.net",  # someone else's address
        "https://portal.example/consent?e=%EF%BD%82%EF%BD%8F%EF%BD%82%EF%BC%A0example.com",  # full-width, encoded
    ],
)
def test_a_form_url_carrying_an_encoded_identifier_is_refused(dpo_client, form_url):
    reason = _refused(_ingest(dpo_client, {"form_url": form_url}), "form_url")
    assert "never stored" in reason


@pytest.mark.django_db
def test_the_persons_own_identifier_is_found_in_a_url_however_it_is_encoded(dpo_client):
    # A patient number is no e-mail address: only the comparison with the subject finds it.
    response = _ingest(dpo_client, {"form_url": "https://portal.example/p/MRN%252D0042/consent"}, subject="mrn-0042")
    assert "person's identifier" in _refused(response, "form_url")


@pytest.mark.django_db
def test_a_query_string_and_fragment_are_dropped_and_the_answer_says_so(dpo_client, auditor_client):
    response = dpo_client.post(
        URL,
        [
            event(BOB, CLINICAL, "given", at(0), event_id="q-1",
                  evidence={"form_url": "HTTPS://Portal.Example:8443/consent/ml?utm_source=newsletter&session=8f2a#step-3"}),
            event("carol@example.net", CLINICAL, "given", at(0), event_id="q-2",
                  evidence={"form_url": "https://portal.example/consent/ml"}),
        ],
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json() == {"created": 2, "already_present": 0, "evidence_urls_trimmed": 1}
    assert ConsentEvent.objects.get(event_id="q-1").evidence == {"form_url": "https://portal.example:8443/consent/ml"}
    assert ConsentEvent.objects.get(event_id="q-2").evidence == {"form_url": "https://portal.example/consent/ml"}
    assert AuditEvent.objects.filter(action="consent_event.ingested").get().details["evidence_urls_trimmed"] == 1
    # What the auditor reads is the page, without the session or campaign it came with.
    listed = auditor_client.get(URL, {"event_id": "q-1"})
    assert listed.status_code == 200
    assert "session" not in json.dumps(listed.json()) and "utm_source" not in json.dumps(listed.json())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("form_url", "reason"),
    [
        ("javascript:alert(1)", "http or https"),
        ("mailto:bob@example.com", "http or https"),
        ("ftp://files.example/consent", "http or https"),
        ("https:///consent", "no host"),
        ("https://bob:secret@portal.example/consent", "user"),
        ("https://portal.example/con sent", "no spaces"),
        ("https://portal.example:99999/consent", "not a URL"),
    ],
)
def test_a_form_url_must_be_an_http_url_of_a_host(dpo_client, form_url, reason):
    assert reason in _refused(_ingest(dpo_client, {"form_url": form_url}), "form_url")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "text",
    [
        "Confirmed by phone with bob&#64;example.com",  # the attack: an HTML entity
        "Confirmed with bob&amp;#64;example.com",  # the entity escaped once more
        "Confirmed with bob&commat;example.com",
        "Confirmed with ｂｏｂ＠ｅｘａｍｐｌｅ．ｃｏｍ",  # full-width forms
        "Confirmed with bob\u200b@\u200bexample.com",  # zero-width spaces
        "Confirmed with bob@example\u3002com",  # an ideographic full stop
        "Relative dave%40example.org signed for her",  # someone else, percent-encoded
    ],
)
def test_an_encoded_email_address_in_free_text_is_refused(dpo_client, text):
    assert "e-mail address" in _refused(_ingest(dpo_client, {"note": text}), "note")


@pytest.mark.django_db
@pytest.mark.parametrize("text", ["Called back on +44 20 7946 0958", "Phone: (020) 7946-0958 ext", "tel 0612345678"])
def test_a_phone_number_in_free_text_is_refused(dpo_client, text):
    assert "phone number" in _refused(_ingest(dpo_client, {"note": text}), "note")


@pytest.mark.django_db
def test_a_note_without_identifiers_is_stored_as_sent(dpo_client):
    note = "Consent given at the reception desk on 2025-01-01, notice v3 read aloud & signed."
    response = _ingest(dpo_client, {"note": note, "source_system": "front-desk"}, event_id="n-1")
    assert response.status_code == 201, response.content
    assert ConsentEvent.objects.get(event_id="n-1").evidence == {"note": note, "source_system": "front-desk"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("user_agent", "Mozilla/5.0 (contact bob&#64;example.com)", "e-mail address"),
        ("user_agent", "Mozilla/5.0\r\nX-Injected: 1", "control characters"),
        ("user_agent", "M" * 1001, "at most 1000"),
        ("note", "n" * 1001, "at most 1000"),
        ("source_system", "portal<script>", "name of a system"),
        ("source_system", "ｐｏｒｔａｌ", "name of a system"),
        ("source_system", "s" * 101, "at most 100"),
        ("ip", "203.0.113.57/24", "not an IPv4 or IPv6 address"),
        ("ip", 3405803833, "expected a string"),
    ],
)
def test_each_key_has_its_own_rule_and_its_refusal_says_which(dpo_client, key, value, reason):
    assert reason in _refused(_ingest(dpo_client, {key: value}), key)


@pytest.mark.django_db
def test_an_unknown_key_is_refused_naming_it_and_the_allowed_keys(dpo_client):
    reason = _refused(_ingest(dpo_client, {"form_url": "https://portal.example/", "email": BOB}), "email")
    assert "unknown" in reason and "form_url, ip, user_agent, source_system, note" in reason


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("ip", "stored"),
    [
        ("203.0.113.57", "203.0.113.0"),
        ("::ffff:203.0.113.57", "203.0.113.0"),  # an IPv4 address written as IPv6 keeps its /24, not less
        ("2001:db8:abcd:12:34::7", "2001:db8:abcd::"),
        ("203.0.113.0", "203.0.113.0"),
    ],
)
def test_an_ip_address_is_stored_truncated(dpo_client, ip, stored):
    response = _ingest(dpo_client, {"ip": ip}, event_id="ip-1")
    assert response.status_code == 201, response.content
    assert ConsentEvent.objects.get(event_id="ip-1").evidence == {"ip": stored}


@pytest.mark.django_db
def test_a_value_encoded_many_times_over_is_refused(dpo_client):
    value = "bob@example.com"
    for _ in range(6):
        value = value.replace("%", "%25").replace("@", "%40")
    reason = _refused(_ingest(dpo_client, {"note": f"ref {value}"}, subject="carol@example.net"), "note")
    assert "encoded more than" in reason


@pytest.mark.django_db
def test_one_refused_value_in_a_batch_writes_nothing_and_names_its_event(dpo_client):
    batch = [
        event("a@x.org", CLINICAL, "given", at(0), evidence={"form_url": "https://portal.example/?utm=1"}),
        event("b@x.org", CLINICAL, "given", at(0), evidence={"user_agent": "UA b%40x.org"}),
    ]
    response = dpo_client.post(URL, batch, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["events[1].evidence.user_agent"]
    assert not ConsentEvent.objects.exists()
