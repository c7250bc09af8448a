"""Admin pages of DPIAs and reports go through the services (audit, rules)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from assessments import services
from assessments.models import Dpia, DpiaStatus
from governance.models import AuditEvent, ReportJob
from governance.reports import jobs
from tests.governance.reports_helpers import make_world

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = get_user_model().objects.create_superuser("admin_dpo", "admin@example.test", "pw")
    client.force_login(user)
    client.user = user
    return client


def test_change_page_shows_screening_and_risks_and_sign_action_enforces_rules(admin_client):
    world = make_world()
    dpia = services.dpia_create(processing_activity=world.activity, actor=admin_client.user, model_version_ids=[world.model_version.pk])
    services.dpia_risk_add(dpia=dpia, actor=admin_client.user, description="Linkage with claims data", likelihood="possible", severity="significant")
    page = admin_client.get(f"/admin/assessments/dpia/{dpia.pk}/change/")
    assert page.status_code == 200
    assert b"Linkage with claims data" in page.content and b"large_scale" in page.content

    response = admin_client.post(
        "/admin/assessments/dpia/", {"action": "sign_selected", "_selected_action": [dpia.pk]}, follow=True
    )
    assert response.status_code == 200
    assert b"required section(s) empty" in response.content
    assert Dpia.objects.get(pk=dpia.pk).status == DpiaStatus.DRAFT


def test_generate_pdf_action_and_download(admin_client):
    world = make_world()
    dpia = services.dpia_create(processing_activity=world.activity, actor=admin_client.user)
    admin_client.post("/admin/assessments/dpia/", {"action": "generate_pdf", "_selected_action": [dpia.pk]})
    job = ReportJob.objects.get(kind="dpia", object_id=dpia.pk)
    jobs.report_job_run(job_id=job.pk)  # on_commit does not fire inside a test transaction
    listing = admin_client.get("/admin/governance/reportjob/")
    assert b"download PDF" in listing.content
    download = admin_client.get(f"/admin/governance/reportjob/{job.pk}/download/")
    assert download.status_code == 200 and download["Content-Type"] == "application/pdf"
    assert b"".join(download.streaming_content).startswith(b"%PDF")


def test_saving_a_draft_in_admin_goes_through_the_service(admin_client):
    world = make_world()
    dpia = services.dpia_create(processing_activity=world.activity, actor=admin_client.user)
    page = admin_client.get(f"/admin/assessments/dpia/{dpia.pk}/change/")
    form = page.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if k in form.fields and v is not None}
    data["model_versions"] = []
    data["dpo_advice"] = "Go ahead with yearly review."
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        prefix = formset.prefix
        data[f"{prefix}-TOTAL_FORMS"] = formset.total_form_count()
        data[f"{prefix}-INITIAL_FORMS"] = formset.initial_form_count()
        data[f"{prefix}-MIN_NUM_FORMS"] = 0
        data[f"{prefix}-MAX_NUM_FORMS"] = 1000
        for i, f in enumerate(formset.forms):
            data[f"{prefix}-{i}-id"] = f.instance.pk
            data[f"{prefix}-{i}-dpia"] = dpia.pk
            for name, value in f.initial.items():
                if name in f.fields and value is not None:
                    data[f"{prefix}-{i}-{name}"] = value
    data = {k: ("" if v is None else v) for k, v in data.items()}
    response = admin_client.post(f"/admin/assessments/dpia/{dpia.pk}/change/", data)
    assert response.status_code == 302, [fs.formset.errors for fs in response.context["inline_admin_formsets"]]
    assert Dpia.objects.get(pk=dpia.pk).dpo_advice == "Go ahead with yearly review."
    assert AuditEvent.objects.filter(action="dpia.updated", object_id=str(dpia.pk)).exists()


def test_adding_a_dpia_in_admin_proposes_the_screening(admin_client):
    world = make_world()
    assert admin_client.get("/admin/assessments/dpia/add/").status_code == 200
    response = admin_client.post(
        "/admin/assessments/dpia/add/",
        {
            "processing_activity": world.activity.pk, "title": "Admin-made DPIA", "model_versions": [world.model_version.pk],
            "systematic_description": "", "necessity_and_proportionality": "", "measures": "", "dpo_advice": "",
            "data_subject_views": "", "views_not_sought_reason": "", "review_date": "", "required_override": "unknown",
            "required_override_justification": "",
            "screening-TOTAL_FORMS": 0, "screening-INITIAL_FORMS": 0, "screening-MIN_NUM_FORMS": 0, "screening-MAX_NUM_FORMS": 1000,
            "risks-TOTAL_FORMS": 0, "risks-INITIAL_FORMS": 0, "risks-MIN_NUM_FORMS": 0, "risks-MAX_NUM_FORMS": 1000,
        },
    )
    assert response.status_code == 302, response.content[:2000]
    dpia = Dpia.objects.get(processing_activity=world.activity)
    assert dpia.title == "Admin-made DPIA" and list(dpia.model_versions.all()) == [world.model_version]
    assert dpia.screening.filter(criterion="sensitive_data", proposed=True).exists()
    assert AuditEvent.objects.filter(action="dpia.created", object_id=str(dpia.pk)).exists()
