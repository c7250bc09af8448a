"""What a decision leaves behind: no input value anywhere in the database (unless the
activity keeps inputs, and then only in their own table until the purge), the decision log
and its export, the purge of inputs and of the log past its retention, and the startup
check of that retention (issue 19 items 2 and 7)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from decisions.checks import decision_log_retention_check
from decisions.models import Decision, DecisionInput, DecisionInputRetention, DecisionReview
from decisions.services import decision_contest, decision_input_retention_set, decisions_make, decisions_purge
from governance.models import AuditEvent
from governance.services import ServiceError, user_ensure_with_role
from tests.decisions.helpers import trained_version

pytestmark = pytest.mark.django_db

IDENTIFIERS = ["Zelda.Quinlan-7731@clinic.example", "patient-99173-qx"]


def distinctive_rows(n: int = 6) -> list[dict]:
    # Nine significant digits: no other number in the database has this text by chance.
    return [{f"x{j}": round(0.8731402 + 0.0190001 * i - 0.4123 * j, 9) + 1e-9 * (7 + i + j) for j in range(4)}
            for i in range(n)]


def texts_of(rows: list[dict]) -> set[str]:
    return {repr(v) for r in rows for v in r.values()}


def tables_holding(needles: set[str]) -> dict[str, set[str]]:
    """Every table and column of the database, each value as text: which needles appear where."""
    found: dict[str, set[str]] = {}
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            columns = [c.name for c in connection.introspection.get_table_description(cursor, table)]
            quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
            cursor.execute(f"SELECT {quoted} FROM {connection.ops.quote_name(table)}")
            for values in cursor.fetchall():
                for column, value in zip(columns, values, strict=True):
                    if value is None:
                        continue
                    text = value.decode("utf-8", "replace") if isinstance(value, bytes | memoryview) else str(value)
                    hits = {n for n in needles if n in text}
                    if hits:
                        found.setdefault(f"{table}.{column}", set()).update(hits)
    return found


def test_no_input_value_nor_identifier_is_stored_anywhere(dpo_client):
    version = trained_version()
    rows = distinctive_rows()
    needles = texts_of(rows) | set(IDENTIFIERS) | {i.casefold() for i in IDENTIFIERS}
    assert not tables_holding(needles), "the test's values must be new to the database"
    explained = decisions_make(model_version=version, rows=rows[:3], subjects=[IDENTIFIERS[0], None, IDENTIFIERS[1]],
                               explain=True)
    assert all(d["explanation"]["top_contributions"] for d in explained["decisions"])
    response = dpo_client.post(f"/api/v1/models/{version.pk}/predict/",
                               {"rows": rows[3:], "subjects": [IDENTIFIERS[1], None, None], "explain": False},
                               format="json")
    assert response.status_code == 200, response.content
    # A contest and its review touch the decision too.
    decision = Decision.objects.get(pk=explained["decisions"][0]["decision"])
    decision_contest(decision=decision, reason="I dispute it", channel="email")
    assert Decision.objects.filter(model_version=version).count() == 6
    assert tables_holding(needles) == {}


def test_an_activity_that_keeps_inputs_keeps_them_only_in_their_table_until_the_purge():
    version = trained_version()
    activity = version.training_run.snapshot.dataset.processing_activity
    dpo = user_ensure_with_role(username="retention-dpo", role="dpo")
    with pytest.raises(ServiceError) as refused:
        decision_input_retention_set(processing_activity=activity, days=30, article="", reason="review", actor=dpo)
    assert refused.value.field == "article"
    retention = decision_input_retention_set(processing_activity=activity, days=30, reason="Human review on request",
                                             article="Art. 22(3) GDPR", actor=dpo)
    rows = distinctive_rows(3)
    answer = decisions_make(model_version=version, rows=rows, explain=False)
    assert answer["inputs_kept_until"] is not None
    where = tables_holding(texts_of(rows))
    assert set(where) == {"decisions_decisioninput.features"}, where
    kept = DecisionInput.objects.filter(decision__batch=answer["batch"])
    assert kept.count() == 3 and all(k.retention_id == retention.pk for k in kept)
    assert {k.decision.position: k.features for k in kept.select_related("decision")} == dict(enumerate(rows))
    # The rows are append-only: a change is a new row, and turning keeping off cuts what is kept.
    with pytest.raises(Exception, match="append-only"):
        retention.save()
    decision_input_retention_set(processing_activity=activity, days=0, reason="No longer needed", actor=dpo)
    assert decisions_purge()["inputs_deleted"] == 3
    assert tables_holding(texts_of(rows)) == {}
    # New decisions keep nothing now; the purge is idempotent.
    decisions_make(model_version=version, rows=rows, explain=False)
    assert not DecisionInput.objects.exists()
    assert decisions_purge() == {"inputs_deleted": 0, "decisions_deleted": 0}


def test_inputs_expire_after_their_period():
    version = trained_version()
    activity = version.training_run.snapshot.dataset.processing_activity
    decision_input_retention_set(processing_activity=activity, days=10, article="Art. 22(3) GDPR", reason="review",
                                 actor=None)
    decisions_make(model_version=version, rows=distinctive_rows(2), explain=False)
    assert decisions_purge(now=timezone.now() + timedelta(days=9))["inputs_deleted"] == 0
    assert decisions_purge(now=timezone.now() + timedelta(days=10, minutes=1))["inputs_deleted"] == 2
    assert Decision.objects.filter(model_version=version).count() == 2  # the decisions stay


def test_the_log_is_purged_after_its_retention_but_not_a_decision_under_review(settings):
    version = trained_version()
    answer = decisions_make(model_version=version, rows=distinctive_rows(4), explain=False)
    ids = [d["decision"] for d in answer["decisions"]]
    old = timezone.now() - timedelta(days=settings.DECISION_LOG_RETENTION_DAYS + 1)
    Decision.objects.filter(pk__in=ids[:3]).update(decided_at=old)
    decision_contest(decision=Decision.objects.get(pk=ids[0]), reason="contested", channel="letter")
    before = AuditEvent.objects.count()
    assert decisions_purge() == {"inputs_deleted": 0, "decisions_deleted": 2}
    assert set(Decision.objects.filter(pk__in=ids).values_list("pk", flat=True)) == {ids[0], ids[3]}
    assert AuditEvent.objects.order_by("-position").first().action == "decisions.purged"
    assert AuditEvent.objects.count() == before + 1
    assert decisions_purge() == {"inputs_deleted": 0, "decisions_deleted": 0}
    assert DecisionReview.objects.filter(decision_id=ids[0]).exists()


def test_a_retention_below_six_months_is_refused_at_startup(settings):
    assert decision_log_retention_check() == []
    settings.DECISION_LOG_RETENTION_DAYS = 182
    errors = decision_log_retention_check()
    assert [e.id for e in errors] == ["decisions.E001"] and "183" in errors[0].msg
    with pytest.raises(Exception, match="decisions.E001"):
        call_command("check")


def test_the_decision_log_counts_by_outcome_per_day_and_exports_csv(dpo_client, auditor_client, ml_client):
    import csv
    import io

    version = trained_version()
    other = trained_version(seed=4)
    answer = decisions_make(model_version=version, rows=distinctive_rows(5), explain=True)
    decisions_make(model_version=other, rows=distinctive_rows(2), explain=False)
    yesterday = timezone.now() - timedelta(days=1)
    Decision.objects.filter(pk=answer["decisions"][0]["decision"]).update(decided_at=yesterday)

    log = auditor_client.get(f"/api/v1/decisions/log/?model={version.pk}")
    assert log.status_code == 200, log.content
    counts = log.json()["counts"]
    assert log.json()["retention_days"] == 183
    assert sum(r["decisions"] for r in counts) == 5 and {r["model_version"] for r in counts} == {version.pk}
    days = sorted({r["day"] for r in counts})
    assert len(days) == 2
    assert sum(r["decisions"] for r in counts if r["day"] == days[0]) == 1
    outcomes = {str(d["output"]["label"]) for d in answer["decisions"]}
    assert {r["outcome"] for r in counts} == outcomes
    assert sum(r["decisions"] for r in auditor_client.get("/api/v1/decisions/log/").json()["counts"]) == 7

    export = auditor_client.get(f"/api/v1/decisions/export/?model={version.pk}")
    assert export.status_code == 200 and export["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(b"".join(export.streaming_content).decode())))
    assert len(lines) == 5 and {line["model_version_id"] for line in lines} == {str(version.pk)}
    assert all(line["explained"] == "yes" and line["top_features"] for line in lines)
    assert "subject_pseudonym" not in lines[0]
    since = (timezone.localdate()).isoformat()
    today_only = dpo_client.get(f"/api/v1/decisions/export/?model={version.pk}&since={since}")
    assert len(list(csv.DictReader(io.StringIO(b"".join(today_only.streaming_content).decode())))) == 4
    for bad, field in (("model=abc", "model"), ("since=yesterday", "since"),
                       (f"since={since}&until={since}", "until")):
        response = dpo_client.get(f"/api/v1/decisions/export/?{bad}")
        assert response.status_code == 400 and field in response.json(), (bad, response.content)
    assert ml_client.get("/api/v1/decisions/export/").status_code == 403


def test_decisions_are_listed_for_the_dpo_and_the_auditor_without_who(auditor_client, ml_client):
    version = trained_version()
    answer = decisions_make(model_version=version, rows=distinctive_rows(2), subjects=[IDENTIFIERS[0], None],
                            explain=True)
    page = auditor_client.get(f"/api/v1/decisions/?model_version={version.pk}")
    assert page.status_code == 200
    results = page.json()["results"]
    assert {r["id"] for r in results} == {d["decision"] for d in answer["decisions"]}
    assert {r["subject_given"] for r in results} == {True, False}
    assert all("subject_pseudonym" not in r for r in results)
    one = auditor_client.get(f"/api/v1/decisions/{results[0]['id']}/").json()
    assert one["explanation"]["top_features"] and one["contested"] is False
    assert ml_client.get("/api/v1/decisions/").status_code == 403


def test_retention_options_through_the_api(dpo_client, auditor_client):
    version = trained_version()
    activity = version.training_run.snapshot.dataset.processing_activity_id
    body = {"processing_activity": activity, "days": 40, "article": "Art. 22(3) GDPR", "reason": "review period"}
    assert auditor_client.post("/api/v1/decision-input-retentions/", body, format="json").status_code == 403
    created = dpo_client.post("/api/v1/decision-input-retentions/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["days"] == 40 and created.json()["set_by"] == "test_dpo"
    refused = dpo_client.post("/api/v1/decision-input-retentions/", {**body, "article": ""}, format="json")
    assert refused.status_code == 400 and "article" in refused.json()
    missing = dpo_client.post("/api/v1/decision-input-retentions/", {**body, "processing_activity": 999999}, format="json")
    assert missing.status_code == 400 and "processing_activity" in missing.json()
    assert auditor_client.get(f"/api/v1/decision-input-retentions/?processing_activity={activity}").json()["count"] == 1
    assert DecisionInputRetention.objects.count() == 1


def test_the_service_refuses_to_start_with_a_log_kept_under_six_months():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "DEBUG": "1", "DECISION_LOG_RETENTION_DAYS": "90"}
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "decisions.E001" in result.stderr, result.stderr[-2000:]


def test_an_erased_person_is_unlinked_from_their_decisions():
    from decisions.services import decisions_subject_forget
    from governance.pseudonymisation import pseudonymise

    version = trained_version()
    activity = version.training_run.snapshot.dataset.processing_activity
    decision_input_retention_set(processing_activity=activity, days=30, article="Art. 22(3) GDPR", reason="review",
                                 actor=None)
    answer = decisions_make(model_version=version, rows=distinctive_rows(3), subjects=IDENTIFIERS + [None],
                            explain=False)
    gone = pseudonymise(IDENTIFIERS[0])
    assert decisions_subject_forget(pseudonyms=[gone]) == {"decisions_unlinked": 1, "inputs_deleted": 1}
    first, second, _ = (Decision.objects.get(pk=d["decision"]) for d in answer["decisions"])
    assert first.subject_pseudonym == "" and second.subject_pseudonym == pseudonymise(IDENTIFIERS[1])
    assert not DecisionInput.objects.filter(decision=first).exists()
    assert DecisionInput.objects.filter(decision=second).exists()
    assert decisions_subject_forget(pseudonyms=[gone]) == {"decisions_unlinked": 0, "inputs_deleted": 0}


def test_an_erasure_unlinks_the_person_from_their_decisions_in_the_same_commit():
    """The erasure's subject-row step sends governance.signals.subject_erasing inside its
    transaction; decisions blanks the pseudonym and deletes kept inputs there, so no certified
    erasure leaves a decision naming the person."""
    from governance.pseudonymisation import pseudonymise
    from rights import execution
    from rights import services as rights_services
    from rights.models import ErasureRequest
    from tests.rights import helpers as h

    version = trained_version()
    activity = version.training_run.snapshot.dataset.processing_activity
    decision_input_retention_set(processing_activity=activity, days=30, article="Art. 22(3) GDPR", reason="review",
                                 actor=None)
    person = "erased.decided@clinic.example"
    subject = h.subject_for(person)
    h.dataset_with_records(act=h.activity(), rows=[(subject, {"x0": 1.0, "x1": 0.0}, 1)])
    answer = decisions_make(model_version=version, rows=distinctive_rows(2), subjects=[person, IDENTIFIERS[1]],
                            explain=False)
    mine, other = (Decision.objects.get(pk=d["decision"]) for d in answer["decisions"])
    assert mine.subject_pseudonym == pseudonymise(person)

    request = rights_services.erasure_request_receive(identifier=person, ground="17_1_a")
    rights_services.erasure_request_verify(erasure_request=request, method="Identity document seen in person")
    rights_services.erasure_request_execute_start(erasure_request=request)
    execution.erasure_request_execute(request_id=request.pk)
    assert ErasureRequest.objects.get(pk=request.pk).status == "completed"

    mine.refresh_from_db()
    other.refresh_from_db()
    assert mine.subject_pseudonym == "" and not DecisionInput.objects.filter(decision=mine).exists()
    assert other.subject_pseudonym == pseudonymise(IDENTIFIERS[1]) and DecisionInput.objects.filter(decision=other).exists()
    assert AuditEvent.objects.filter(action="decisions.subject_forgotten").exists()
