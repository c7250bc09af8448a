import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from governance import services as gov_services
from provenance import services
from provenance.models import Snapshot
from tests.provenance.helpers import SCHEMA, activity, purpose, row

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_():
    user = get_user_model().objects.create_superuser("prov-admin", "a@example.org", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def snapshot():
    dataset = services.dataset_create(name="admin dataset", owner="ml", processing_activity=activity(lawful_basis="contract"), schema=SCHEMA)
    services.dataset_records_ingest(dataset=dataset, rows=[row("alice@example.org"), row("bob@example.org")], actor="t")
    return services.snapshot_create(dataset=dataset, purpose=purpose("ml.training.clinical_risk"))


def test_dataset_list_and_lineage_page(admin_client_, snapshot):
    listing = admin_client_.get("/admin/provenance/dataset/")
    assert listing.status_code == 200
    assert b"admin dataset" in listing.content and b"Lineage of a person" in listing.content
    page = admin_client_.get(f"/admin/provenance/dataset/{snapshot.dataset_id}/lineage/")
    assert page.status_code == 200
    assert b"2 records of 2 subjects" in page.content and f"#{snapshot.pk}".encode() in page.content


def test_subject_lineage_pseudonymises_and_does_not_echo_the_identifier(admin_client_, snapshot):
    page = admin_client_.post("/admin/provenance/dataset/subject-lineage/", {"subject": "Alice@Example.org"})
    assert page.status_code == 200
    assert b"admin dataset" in page.content and f"#{snapshot.pk}".encode() in page.content
    assert b"alice" not in page.content.lower()
    missing = admin_client_.post("/admin/provenance/dataset/subject-lineage/", {"subject": "nobody"})
    assert b"No data held" in missing.content


def test_ml_engineer_staff_cannot_look_people_up(snapshot):
    user = gov_services.user_ensure_with_role(username="prov-ml-staff", role="ml_engineer")
    user.is_staff = True
    user.save()
    client = Client()
    client.force_login(user)
    assert client.post("/admin/provenance/dataset/subject-lineage/", {"subject": "alice@example.org"}).status_code == 403


def test_snapshots_are_read_only_in_the_admin(admin_client_, snapshot):
    page = admin_client_.get(f"/admin/provenance/snapshot/{snapshot.pk}/change/")
    assert page.status_code == 200 and snapshot.merkle_root.encode() in page.content
    assert b'name="_save"' not in page.content
    assert admin_client_.post(f"/admin/provenance/snapshot/{snapshot.pk}/change/", {"included_count": 0}).status_code == 403
    assert admin_client_.post(f"/admin/provenance/snapshot/{snapshot.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Snapshot.objects.get(pk=snapshot.pk).included_count == 2


def test_dataset_page_shows_privacy_budget_spent_against_the_cap(admin_client_, snapshot):
    from mlops import services as mlops_services

    dataset = snapshot.dataset
    page = admin_client_.get(f"/admin/provenance/dataset/{dataset.pk}/change/")
    assert b"no cap set" in page.content
    dpo = get_user_model().objects.get(username="prov-admin")
    mlops_services.privacy_budget_set(dataset=dataset, epsilon_cap=8.0, delta=1e-6, actor=dpo)
    page = admin_client_.get(f"/admin/provenance/dataset/{dataset.pk}/change/")
    assert page.status_code == 200
    assert "spent ε = 0 of a cap of 8 at δ = 1e-6 over 0 run(s)".encode() in page.content
    assert b'<canvas class="chart"' in page.content  # and drawn against the cap
