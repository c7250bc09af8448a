"""The DPO's model, dataset, report and audit-chain pages (issue 16, items 4 and 5): every
page renders for a world with data, shows no raw JSON and no figure with more than four
significant digits, answers 404 for an unknown id, and the buttons a DPO presses (verify
the audit chain, start a report, download it) work from the page."""

from __future__ import annotations

import html
import re

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from governance.models import AuditEvent, ReportJob, ReportStatus
from governance.reports import jobs
from mlops.models import MembershipInferenceAudit, ModelVersion, PrivacyBudget
from tests.governance.reports_helpers import make_world
from tests.mlops.factories import make_snapshot
from tests.mlops.test_privacy_audits import trained

SMALL = {"epochs": 2, "batch_size": 16, "noise_multiplier": 1.0, "seed": 5, "holdout_fraction": 0.3,
         "model_spec": {"hidden_sizes": [8]}}

# A decimal figure (2.99, 0.0123, 1.5e-05); integers (counts, ids, years) are exact and not
# rounded, and dotted names (ml.training.x) or hash prefixes are not figures.
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?(?![\w.])")


def significant_digits(figure: str) -> int:
    mantissa = figure.split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


def long_figures(text: str) -> list[str]:
    """Figures printed with more than 4 significant digits."""
    return [f for f in DECIMAL.findall(text) if significant_digits(f) > 4]


SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1>", re.S | re.I)
TAG = re.compile(r"<[^>]+>")


def visible_text(page: str) -> str:
    """The text a person sees: scripts, styles and tags (with their attributes) removed."""
    return html.unescape(TAG.sub(" ", SCRIPT_OR_STYLE.sub(" ", page)))


def body_markup(page: str) -> str:
    """The page's markup without script and style elements (attribute values stay escaped)."""
    return SCRIPT_OR_STYLE.sub(" ", page)


def assert_readable(page: str, where: str) -> None:
    text = visible_text(page)
    markup = body_markup(page)
    assert '{"' not in markup and "[[" not in markup, f"{where}: raw JSON on the page"
    assert '{"' not in text and "[[" not in text, f"{where}: raw JSON in the text"
    long = long_figures(text)
    assert not long, f"{where}: figures with more than 4 significant digits: {long[:5]}"
    assert "object (" not in text, f"{where}: a record shown by its class name"


def test_the_readability_check_catches_what_it_should():
    assert long_figures(visible_text("<td>ε 2.9945933710672854</td>")) == ["2.9945933710672854"]
    assert long_figures(visible_text("<td>AUC 0.53214</td><td>1.23456e-05</td>")) == ["0.53214", "1.23456e-05"]
    assert long_figures(visible_text("<td>2.9945</td>")) == ["2.9945"]  # five significant digits
    assert not long_figures(visible_text('<td data-x="2.99459337">2.99</td><td>12,300</td><td>1e-5</td>'
                                         "<td>0.0123</td><td>61.8%</td><td>ml.training.v2</td>"))
    with pytest.raises(AssertionError):
        assert_readable('<p>{"a": 1}</p>', "x")


@pytest.fixture
def dpo_client(db):
    from governance import services

    # A DPO who may use the admin (the role is the API's; the admin asks for model permissions).
    user = services.user_ensure_with_role(username="workspace-dpo", role="dpo")
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    client = Client()
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def world(db):
    return make_world()


@pytest.fixture
def trained_version(db, settings):
    """A version trained for real (epoch metrics, accountant history, RDP curve, audits)."""
    settings.MLOPS_LIRA_REFERENCES = 2
    return trained(make_snapshot(n=120, d=4, seed=1, health_condition=True), **SMALL)


def pages_of(world, version: ModelVersion) -> list[str]:
    run = version.training_run
    snapshot = run.snapshot
    audit = MembershipInferenceAudit.objects.filter(model_version=version).first()
    pages = [
        f"/admin/mlops/modelversion/{version.pk}/change/",
        f"/admin/mlops/trainingrun/{run.pk}/change/",
        f"/admin/provenance/dataset/{snapshot.dataset_id}/change/",
        f"/admin/provenance/snapshot/{snapshot.pk}/change/",
        f"/admin/provenance/dataset/{snapshot.dataset_id}/lineage/",
        "/admin/mlops/modelversion/", "/admin/mlops/trainingrun/", "/admin/mlops/membershipinferenceaudit/",
        "/admin/mlops/privacybudget/", "/admin/mlops/privacyledgerentry/", "/admin/provenance/dataset/",
        "/admin/provenance/snapshot/", "/admin/governance/reportjob/", "/admin/governance/auditevent/",
        "/admin/governance/processingactivity/", "/admin/assessments/dpia/",
    ]
    if audit is not None:
        pages.append(f"/admin/mlops/membershipinferenceaudit/{audit.pk}/change/")
    budget = PrivacyBudget.objects.filter(dataset_id=snapshot.dataset_id).first()
    if budget is not None:
        pages.append(f"/admin/mlops/privacybudget/{budget.pk}/change/")
    event = AuditEvent.objects.order_by("-position").first()
    pages.append(f"/admin/governance/auditevent/{event.pk}/change/")
    return pages


@pytest.mark.django_db
def test_every_page_of_a_world_renders_readably(dpo_client, world):
    from assessments import services as dpia_services

    dpia = dpia_services.dpia_create(processing_activity=world.activity, actor=dpo_client.user,
                                     model_version_ids=[world.model_version.pk])
    for url in [*pages_of(world, world.model_version), f"/admin/assessments/dpia/{dpia.pk}/change/"]:
        response = dpo_client.get(url)
        assert response.status_code == 200, url
        assert_readable(response.content.decode(), url)


@pytest.mark.django_db
def test_a_trained_model_page_shows_its_guarantee_lineage_charts_and_dpias(dpo_client, trained_version):
    from assessments import services as dpia_services

    version = trained_version
    run = version.training_run
    dataset = run.snapshot.dataset
    dpia = dpia_services.dpia_create(processing_activity=dataset.processing_activity, actor=dpo_client.user,
                                     model_version_ids=[version.pk])
    page = dpo_client.get(f"/admin/mlops/modelversion/{version.pk}/change/").content.decode()
    assert_readable(page, "model page")
    text = " ".join(visible_text(page).split())
    from governance import display

    assert f"ε = {display.epsilon(version.epsilon)} at δ = {display.delta(version.delta)} (Rényi DP (RDP) accountant)" in text
    # The lineage chain links every step, parents first.
    for href in (f"/admin/provenance/dataset/{dataset.pk}/change/", f"/admin/provenance/snapshot/{run.snapshot_id}/change/",
                 f"/admin/mlops/trainingrun/{run.pk}/change/"):
        assert f'href="{href}"' in page
    # Two charts (ε per epoch, the budget) drawn by unfold's Chart.js, no script of our own.
    assert page.count('<canvas class="chart"') >= 2
    assert "LiRA" in text and "95% CI" in text
    assert f'href="/admin/assessments/dpia/{dpia.pk}/change/"' in page
    assert "Validation accuracy" in text

    run_page = dpo_client.get(f"/admin/mlops/trainingrun/{run.pk}/change/").content.decode()
    assert_readable(run_page, "training run page")
    run_text = " ".join(visible_text(run_page).split())
    assert "Epoch metrics" in run_text and "Noise multiplier σ" in run_text and "Rényi DP curve" in run_text
    assert run_page.count('<canvas class="chart"') >= 2
    assert b'name="_save"' not in run_page.encode()

    dataset_page = dpo_client.get(f"/admin/provenance/dataset/{dataset.pk}/change/").content.decode()
    assert_readable(dataset_page, "dataset page")
    dataset_text = " ".join(visible_text(dataset_page).split())
    assert "condition" in dataset_text and "diabetes" in dataset_text  # the schema as a table with categories
    assert f'href="/admin/mlops/modelversion/{version.pk}/change/"' in dataset_page  # models trained on it
    assert '<canvas class="chart"' in dataset_page  # the budget as a chart

    listing = dpo_client.get("/admin/mlops/membershipinferenceaudit/").content.decode()
    assert_readable(listing, "MIA list")
    assert f'href="/admin/mlops/modelversion/{version.pk}/change/"' in listing and "95% CI" in listing


@pytest.mark.django_db
def test_epsilon_headers_stay_lower_case(dpo_client, world):
    page = dpo_client.get("/admin/mlops/modelversion/").content.decode()
    assert '<span class="normal-case">ε</span>' in page
    assert "Ε" not in visible_text(page)  # a capital Greek epsilon reads as the letter E


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "/admin/mlops/modelversion/{}/change/", "/admin/mlops/trainingrun/{}/change/",
    "/admin/mlops/membershipinferenceaudit/{}/change/", "/admin/provenance/dataset/{}/change/",
    "/admin/provenance/snapshot/{}/change/", "/admin/provenance/dataset/{}/lineage/",
    "/admin/governance/reportjob/{}/change/", "/admin/governance/reportjob/{}/download/",
    "/admin/assessments/dpia/{}/change/", "/admin/mlops/modelversion/{}/lineage-report/",
    "/admin/assessments/dpia/{}/report/",
])
def test_unknown_ids_are_404_pages(dpo_client, url):
    for missing in ("999999", "not-a-number"):
        path = url.format(missing)
        # Django's admin sends an unknown sub-path of an object to its change page first.
        response = dpo_client.get(path, follow=True)
        assert response.status_code == 404, path
        response = dpo_client.post(path, follow=True)
        assert response.status_code in (403, 404), path


@pytest.mark.django_db
def test_verifying_the_audit_chain_shows_the_result_in_words(dpo_client, world):
    from governance.services import audit_event_record

    for i in range(3):
        audit_event_record(actor="tester", action="test.event", object_type="thing", object_id=i)
    page = dpo_client.get("/admin/governance/auditevent/").content.decode()
    assert 'action="/admin/governance/auditevent/verify/"' in page
    events = AuditEvent.objects.count()
    response = dpo_client.post("/admin/governance/auditevent/verify/", follow=True)
    assert response.status_code == 200
    text = " ".join(visible_text(response.content.decode()).split())
    assert "The audit chain is intact:" in text and f"Events checked {events:,} First break none" in text
    assert AuditEvent.objects.filter(action="audit.verified").count() == 1
    # The list page now says when it was last verified.
    text = " ".join(visible_text(dpo_client.get("/admin/governance/auditevent/").content.decode()).split())
    assert "Last verified" in text and "intact" in text

    # A tampered event is reported with its position and the reason.
    first = AuditEvent.objects.order_by("position").first()
    with connection.cursor() as cursor:  # around the ORM's guard, as someone with database access would
        cursor.execute("UPDATE governance_auditevent SET action = 'tampered' WHERE position = %s", [first.position])
    response = dpo_client.post("/admin/governance/auditevent/verify/", follow=True)
    text = " ".join(visible_text(response.content.decode()).split())
    assert f"The audit chain is broken at event #{first.position}" in text and "altered" in text


@pytest.mark.django_db
def test_report_jobs_start_from_the_pages_and_download(dpo_client, world):
    from assessments import services as dpia_services

    dpia = dpia_services.dpia_create(processing_activity=world.activity, actor=dpo_client.user,
                                     model_version_ids=[world.model_version.pk])
    starts = {
        "ropa": ("/admin/governance/reportjob/start/ropa/", None),
        "model-lineage": (f"/admin/mlops/modelversion/{world.model_version.pk}/lineage-report/", world.model_version.pk),
        "dpia": (f"/admin/assessments/dpia/{dpia.pk}/report/", dpia.pk),
    }
    for kind, (url, object_id) in starts.items():
        response = dpo_client.post(url, follow=True)
        assert response.status_code == 200, url
        job = ReportJob.objects.get(kind=kind, object_id=object_id)
        assert "queued" in visible_text(response.content.decode())
        jobs.report_job_run(job_id=job.pk)  # on_commit does not fire inside a test transaction
        job.refresh_from_db()
        assert job.status == ReportStatus.SUCCEEDED, job.error
        download = dpo_client.get(f"/admin/governance/reportjob/{job.pk}/download/")
        assert download.status_code == 200 and download["Content-Type"] == "application/pdf"
        assert b"".join(download.streaming_content).startswith(b"%PDF")

    listing = dpo_client.get("/admin/governance/reportjob/").content.decode()
    assert_readable(listing, "report jobs")
    text = visible_text(listing)
    assert "Record of processing activities (Art. 30)" in text and "Model lineage report" in text and "download" in text
    job_page = dpo_client.get(f"/admin/governance/reportjob/{job.pk}/change/").content.decode()
    assert_readable(job_page, "report job page")
    assert 'name="_save"' not in job_page

    # A file gone from disk is a message on the page, never a server error.
    jobs.report_file_path(job).unlink()
    response = dpo_client.get(f"/admin/governance/reportjob/{job.pk}/download/", follow=True)
    assert response.status_code == 200
    assert "The file of report job" in visible_text(response.content.decode())

    # The record of processing as CSV, from the processing-activity page.
    csv = dpo_client.get("/admin/governance/processingactivity/ropa.csv")
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    assert world.activity.name in csv.content.decode()
    assert 'href="/admin/governance/processingactivity/ropa.csv"' in dpo_client.get(
        "/admin/governance/processingactivity/").content.decode()


@pytest.mark.django_db
def test_a_report_that_cannot_start_is_a_message(dpo_client, world):
    response = dpo_client.post("/admin/governance/reportjob/start/not-a-kind/", follow=True)
    assert response.status_code == 404
    ml = get_user_model().objects.create_user(username="ws-ml", password="x", is_staff=True)
    client = Client()
    client.force_login(ml)
    assert client.post("/admin/governance/auditevent/verify/").status_code == 403
    assert client.post("/admin/governance/reportjob/start/ropa/").status_code == 403
    assert not ReportJob.objects.exists()
