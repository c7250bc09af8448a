"""The small world the browser tests look at: people, datasets, a trained model, erasure
requests in every state a DPO meets, a DPIA and report jobs, and the decisions the model
made (explained, one of them contested).

Built through the services where a DPO's action would build it (requests are received,
verified, rejected and executed by the rights services; the model is trained by mlops's), and
with the shared test factories elsewhere, so the pages show what a real deployment shows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from decisions.models import Decision, DecisionReview
from governance.models import ConsentEvent, DataSubject, ReportJob
from mlops.models import ModelVersion
from rights.models import ErasureRequest
from tests.governance.reports_helpers import World, make_world
from tests.mlops.helpers import wait_for
from tests.rights import helpers as h

# How long ago the overdue request arrived: a one-month deadline (rights/deadlines.py), even
# moved to the next working day, has passed after 40 days.
OVERDUE_AFTER_DAYS = 40
# Decisions the served model makes (explained), and how long the processing activity keeps
# their inputs for a review (so a decision's page shows the input kept, as a DPO sees it).
DECISIONS = 5
INPUT_RETENTION_DAYS = 40


@dataclass(eq=False)
class BrowserWorld:
    reports: World
    identifier: str  # the overdue requester's e-mail: pseudonymised on receipt, never stored
    person: DataSubject
    dataset: object
    snapshot: object
    model_version: ModelVersion
    overdue: ErasureRequest
    others: list[ErasureRequest]
    neighbour_identifier: str  # someone else in the same dataset and model, with no request
    decisions: list[Decision]  # made by model_version while active, explained
    contested: DecisionReview  # the open review of decisions[0], received by letter


def _wait_until_completed(request_id: int) -> ErasureRequest:
    wait_for(lambda: ErasureRequest.objects.filter(pk=request_id, status="completed").exists(),
             timeout=120, what=f"erasure request {request_id} to complete")
    return ErasureRequest.objects.get(pk=request_id)


def build(*, dpo, full: bool = True) -> BrowserWorld:
    """``full``: also requests in the other states, a DPIA and report jobs (the page walk);
    without it only what the journey needs."""
    from rights import services as rights

    tag = uuid.uuid4().hex[:6]
    identifier = f"dana.{tag}@example.org"
    act = h.activity()
    dana = h.subject_for(identifier)
    people = [dana, *h.crowd(39, tag)]
    dataset = h.people_dataset(act=act, people=people, seed=1)
    snapshot = h.snapshot_of(dataset)
    ConsentEvent.objects.create(
        event_id=f"browser-{tag}-given", subject=dana, purpose=act.purposes.first(), action="given",
        occurred_at=timezone.now() - timedelta(days=60), notice_version="v1", notice_sha256="0" * 64, method="web_form",
    )
    run = h.train(snapshot=snapshot, name=f"readmission-{tag}")
    model_version = ModelVersion.objects.get(training_run=run)
    decisions, contested = _decisions(dpo=dpo, model_version=model_version, act=act, people=people, tag=tag,
                                      decided_review=full)
    overdue = rights.erasure_request_receive(
        identifier=identifier, ground="17_1_a", channel="email",
        received_at=timezone.now() - timedelta(days=OVERDUE_AFTER_DAYS), actor=dpo,
    )
    reports = make_world()
    others: list[ErasureRequest] = []
    if full:
        _withdrawals(people=people[11:19], purpose=act.purposes.first(), tag=tag)
        others = _requests_in_every_state(dpo=dpo, people=people, tag=tag)
        _dpia_and_reports(dpo=dpo, reports=reports)
    return BrowserWorld(reports, identifier, dana, dataset, snapshot, model_version, overdue, others,
                        neighbour_identifier=f"person-{tag}-3@example.org", decisions=decisions, contested=contested)


def _decisions(*, dpo, model_version: ModelVersion, act, people: list[DataSubject], tag: str,
               decided_review: bool) -> tuple[list[Decision], DecisionReview]:
    """The active model decides about a few new applicants (three of them named), explained,
    with their inputs kept 40 days for a review; the first decision is contested by letter
    and left for the DPO; with ``decided_review`` the second is contested and upheld too, so
    the page walk opens a decided review as well as an open one."""
    import numpy as np

    from decisions import services as decisions

    assert model_version.status == "active", model_version.status
    decisions.decision_input_retention_set(
        processing_activity=act, days=INPUT_RETENTION_DAYS, article="Art. 22(3) GDPR: human intervention on request",
        reason="A reviewer needs the inputs the model saw while a decision can be contested.", actor=dpo,
    )
    rng = np.random.default_rng(19)
    rows = [{f"x{j}": round(float(x), 6) for j, x in enumerate(rng.normal(size=4))} for _ in range(DECISIONS)]
    subjects = [f"person-{tag}-{i}@example.org" for i in (4, 5, 6)] + [None] * (DECISIONS - 3)
    answer = decisions.decisions_make(model_version=model_version, rows=rows, subjects=subjects, explain=True,
                                      actor=dpo)
    made = list(Decision.objects.filter(pk__in=[d["decision"] for d in answer["decisions"]]).order_by("position"))
    assert all(d.explanation and d.explanation.get("top_features") for d in made), [d.explanation for d in made]
    contested = decisions.decision_contest(
        decision=made[0], channel="letter", actor=dpo,
        reason="The person writes that their readings were taken during an infection and asks for a human review.",
    )
    if decided_review:
        review = decisions.decision_contest(decision=made[1], channel="email", actor=dpo,
                                            reason="The person asks why the decision was made.")
        decisions.decision_review_decide(review=review, outcome="upheld", reviewer=dpo,
                                         reasons="The decision follows from the values given; it stands.")
    return made, contested


def _withdrawals(*, people: list[DataSubject], purpose, tag: str) -> None:
    """Consent withdrawn by a few people over the last weeks, after the model was trained (the
    dashboard charts them per week); written as the ledger's rows, so no request opens."""
    now = timezone.now()
    ConsentEvent.objects.bulk_create([
        ConsentEvent(event_id=f"browser-{tag}-withdrawn-{i}", subject=person, purpose=purpose, action="withdrawn",
                     occurred_at=now - timedelta(days=3 + 5 * i), notice_version="v1", notice_sha256="0" * 64,
                     method="web_form")
        for i, person in enumerate(people)
    ])


def _requests_in_every_state(*, dpo, people: list[DataSubject], tag: str) -> list[ErasureRequest]:
    """A request verified and near its deadline, one rejected (with its refusal notice), one
    answered at once (no data held) and one executed (with its certificate)."""
    from rights import services as rights

    now = timezone.now()
    near = rights.erasure_request_receive(identifier=f"person-{tag}-1@example.org", ground="17_1_a",
                                          channel="letter", received_at=now - timedelta(days=26), actor=dpo)
    near = rights.erasure_request_verify(erasure_request=near, method="letter with ID copy", actor=dpo)
    rejected = rights.erasure_request_receive(identifier=f"person-{tag}-2@example.org", ground="17_1_d",
                                              channel="phone", actor=dpo)
    rejected = rights.erasure_request_reject(erasure_request=rejected, refusal_ground="17_3_b",
                                             justification="Records kept under a legal obligation.", actor=dpo)
    no_data = rights.erasure_request_receive(identifier=f"stranger-{tag}@example.org", ground="17_1_a",
                                             channel="web_form", actor=dpo)
    # Someone held only in a dataset with no model: executing is quick (records and a snapshot).
    gus = h.subject_for(f"gus-{tag}@example.org")
    lone = h.people_dataset(act=h.activity(), people=[gus, *h.crowd(5)], seed=2)
    h.snapshot_of(lone)
    executed = rights.erasure_request_receive(identifier=f"gus-{tag}@example.org", ground="17_1_a",
                                              channel="in_person", actor=dpo)
    rights.erasure_request_verify(erasure_request=executed, method="passport seen at the desk", actor=dpo)
    rights.erasure_request_execute_start(erasure_request=executed, actor=dpo)
    executed = _wait_until_completed(executed.pk)
    return [near, rejected, no_data, executed]


def _dpia_and_reports(*, dpo, reports: World) -> None:
    from assessments import services as assessments
    from governance import services as governance
    from governance.reports import jobs

    dpia = assessments.dpia_create(processing_activity=reports.activity, actor=dpo,
                                   model_version_ids=[reports.model_version.pk])
    assessments.dpia_risk_add(dpia=dpia, actor=dpo, description="Linkage with claims data",
                              likelihood="possible", severity="significant")
    done = jobs.report_job_request(kind="ropa", actor=dpo, enqueue=False)
    jobs.report_job_run(job_id=done.pk)
    # A job still queued: its download must answer with a message or a 404, not a 500.
    jobs.report_job_request(kind="model-lineage", actor=dpo, object_id=reports.model_version.pk, enqueue=False)
    governance.api_key_create(user=dpo, name="pipeline")
    assert ReportJob.objects.filter(pk=done.pk, status="succeeded").exists()
