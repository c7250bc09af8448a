"""Admin pages: live progress of running training runs, models with ε and MIA AUC."""

from __future__ import annotations

import pytest

from mlops import services
from mlops.models import TrainingRun
from tests.mlops.factories import make_snapshot


@pytest.mark.django_db
def test_running_runs_show_a_progress_bar_and_refresh(admin_client):
    snapshot = make_snapshot(n=100, d=3)
    run = services.training_run_queue(snapshot=snapshot, epochs=4, batch_size=16, noise_multiplier=1.0)
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", progress={"epoch": 1, "epochs": 4, "step": 5, "epsilon": 0.5}
    )

    page = admin_client.get("/admin/mlops/trainingrun/").content.decode()
    assert '<progress max="100" value="25"' in page and "epoch 1/4" in page
    assert 'http-equiv="refresh"' in page
    detail = admin_client.get(f"/admin/mlops/trainingrun/{run.pk}/change/").content.decode()
    assert 'http-equiv="refresh"' in detail

    TrainingRun.objects.filter(pk=run.pk).update(status="succeeded")
    assert 'http-equiv="refresh"' not in admin_client.get("/admin/mlops/trainingrun/").content.decode()


@pytest.mark.django_db
def test_registry_pages_render(admin_client):
    for path in ("/admin/mlops/modelversion/", "/admin/mlops/privacybudget/", "/admin/mlops/privacyledgerentry/"):
        assert admin_client.get(path).status_code == 200
