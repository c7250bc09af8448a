"""Honest membership-inference figures (issue 15, item 1): float64 losses from the logits,
seeded sampling with its sizes recorded, 95% bootstrap intervals, and no TPR at an FPR the
non-members cannot measure — in the engine, the service, the API, the admin and the PDF."""

from __future__ import annotations

import numpy
import pytest
import torch
from scipy.special import expit
from torch import nn

from mlops import services
from mlops.engine.mia import loss_threshold_attack
from mlops.models import MembershipInferenceAudit, ModelVersion, RunStatus
from mlops.services.audits import _per_example_losses
from tests.mlops.factories import make_snapshot


def confident_model(margin_scale: float) -> tuple[nn.Module, torch.Tensor, numpy.ndarray, numpy.ndarray]:
    """A linear 2-class model that is right about every example by a margin of 20–35 logits,
    as an over-fitted model is about its training records."""
    model = nn.Sequential(nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[margin_scale / 2], [-margin_scale / 2]]))
        model[0].bias.zero_()
    X = torch.linspace(20, 35, 50, dtype=torch.float32)[:, None] / margin_scale
    y = numpy.zeros(50, dtype=numpy.int64)
    logits = X.double().numpy() @ model[0].weight.detach().double().numpy().T
    return model, X, y, logits[:, 0] - logits[:, 1]


def test_confident_predictions_get_distinct_nonzero_float64_losses():
    model, X, y, margins = confident_model(1.0)
    losses = _per_example_losses([model], X, y)
    # float32 softmax rounded p to exactly 1 here, so every loss was 0: 50 ties no threshold splits.
    assert losses.dtype == numpy.float64
    assert (losses > 0).all()
    assert len(numpy.unique(losses)) == 50
    assert losses == pytest.approx(numpy.log1p(numpy.exp(-margins)), rel=1e-6)


def test_ensemble_loss_is_minus_log_of_the_mean_probability_in_float64():
    first, X, y, margins_1 = confident_model(1.0)
    second, _, _, _ = confident_model(0.9)
    margins_2 = 0.9 * margins_1  # the second model's margins on the first model's inputs
    losses = _per_example_losses([first, second], X, y)
    # sisa.ensemble_predict_proba averages probabilities: −log(1 − mean(1 − p_k)), with 1 − p_k exact.
    expected = -numpy.log1p(-(expit(-margins_1) + expit(-margins_2)) / 2)
    assert (losses > 0).all() and len(numpy.unique(losses)) == 50
    assert losses == pytest.approx(expected, rel=1e-6)


def separated(n_members: int, n_nonmembers: int, seed: int = 0) -> tuple[numpy.ndarray, numpy.ndarray]:
    rng = numpy.random.default_rng(seed)
    return rng.exponential(1.0, n_members), rng.exponential(1.4, n_nonmembers)


def test_bootstrap_intervals_contain_the_estimates_narrow_with_data_and_are_reproducible():
    small = loss_threshold_attack(member_losses=separated(150, 150)[0], nonmember_losses=separated(150, 150)[1], seed=5)
    members, nonmembers = separated(3000, 3000)
    large = loss_threshold_attack(member_losses=members, nonmember_losses=nonmembers, seed=5)
    for result in (small, large):
        assert result.bootstrap_resamples == 1000
        assert result.auc_low <= result.auc <= result.auc_high
        assert result.advantage_low <= result.advantage <= result.advantage_high
        assert result.tpr_at_1pct_fpr_low <= result.tpr_at_1pct_fpr <= result.tpr_at_1pct_fpr_high
    assert large.tpr_at_01pct_fpr_low <= large.tpr_at_01pct_fpr <= large.tpr_at_01pct_fpr_high
    # 20× the data: the AUC interval shrinks by about √20.
    assert (large.auc_high - large.auc_low) < (small.auc_high - small.auc_low) / 3
    assert large.auc_low > 0.5  # 3,000 of each separate these distributions clearly

    again = loss_threshold_attack(member_losses=members, nonmember_losses=nonmembers, seed=5)
    assert (again.auc_low, again.auc_high, again.tpr_at_01pct_fpr_low) == (
        large.auc_low, large.auc_high, large.tpr_at_01pct_fpr_low
    )
    other = loss_threshold_attack(member_losses=members, nonmember_losses=nonmembers, seed=6)
    assert (other.auc_low, other.auc_high) != (large.auc_low, large.auc_high)


def test_tpr_at_an_fpr_the_nonmembers_cannot_measure_is_not_reported():
    members, _ = separated(200, 0)
    result = loss_threshold_attack(member_losses=members, nonmember_losses=separated(0, 999)[1])
    assert result.tpr_at_01pct_fpr is None and result.tpr_at_01pct_fpr_low is None
    assert result.tpr_at_1pct_fpr is not None
    assert "TPR at 0.1% FPR not reported: 0.1% FPR needs ≥ 1,000 non-members; this audit had 999." in result.notes

    result = loss_threshold_attack(member_losses=members, nonmember_losses=separated(0, 65)[1])
    assert result.tpr_at_1pct_fpr is None and result.tpr_at_01pct_fpr is None
    assert "TPR at 1% FPR not reported: 1% FPR needs ≥ 100 non-members; this audit had 65." in result.notes
    assert result.auc_low is not None  # AUC and advantage are always reported, with their interval

    result = loss_threshold_attack(member_losses=members, nonmember_losses=separated(0, 1000)[1])
    assert result.tpr_at_01pct_fpr is not None
    assert not [n for n in result.notes if "not reported" in n]


def test_an_auc_interval_around_chance_says_it_is_weak_evidence():
    losses = numpy.random.default_rng(3).exponential(1.0, 400)
    result = loss_threshold_attack(member_losses=losses[:200], nonmember_losses=losses[200:])
    assert result.auc_low < 0.5 < result.auc_high
    assert any("weak evidence" in n for n in result.notes)


@pytest.fixture
def audited_version(db):
    snapshot = make_snapshot(n=160, d=4, seed=2)
    run = services.training_run_queue(
        snapshot=snapshot, epochs=1, batch_size=32, noise_multiplier=1.0, seed=11, holdout_fraction=0.3,
        model_spec={"hidden_sizes": [8]},
    )
    run = services.training_run_execute(run_id=run.pk)
    assert run.status == RunStatus.SUCCEEDED, run.error
    version = ModelVersion.objects.get(training_run=run)
    MembershipInferenceAudit.objects.filter(model_version=version).delete()  # the embedded task's audit
    return version


@pytest.mark.django_db
def test_the_audit_records_its_sample_intervals_and_notes_reproducibly(audited_version):
    run = audited_version.training_run
    audit = services.membership_inference_audit_run(model_version_id=audited_version.pk, max_examples=20)
    assert audit.members_available == run.n_train > 20 and audit.n_members == 20
    assert audit.nonmembers_available == run.n_holdout > 20 and audit.n_nonmembers == 20
    assert audit.sampling_seed == 11 and "default_rng(seed)" in audit.sampling_rule
    assert audit.bootstrap_resamples == 1000
    assert audit.auc_low <= audit.auc <= audit.auc_high
    assert audit.advantage_low <= audit.advantage <= audit.advantage_high
    assert audit.tpr_at_1pct_fpr is None and audit.tpr_at_01pct_fpr is None
    assert "TPR at 1% FPR not reported: 1% FPR needs ≥ 100 non-members; this audit had 20." in audit.notes

    figures = (audit.auc, audit.auc_low, audit.auc_high, audit.advantage_high)
    MembershipInferenceAudit.objects.filter(pk=audit.pk).delete()
    again = services.membership_inference_audit_run(model_version_id=audited_version.pk, max_examples=20)
    assert (again.auc, again.auc_low, again.auc_high, again.advantage_high) == figures


@pytest.mark.django_db
def test_api_admin_and_pdf_show_the_intervals_and_notes(audited_version, auditor_client, admin_client, tmp_path):
    from assessments.reports.model_lineage import model_lineage_report_render
    from tests.governance.reports_helpers import pdf_text

    audit = services.membership_inference_audit_run(model_version_id=audited_version.pk, max_examples=20)
    shown = f"AUC {audit.auc:.2f} (95% CI {audit.auc_low:.2f}–{audit.auc_high:.2f}, 20 non-members)"

    body = auditor_client.get(f"/api/v1/models/{audited_version.pk}/").json()["membership_inference_audits"][0]
    assert body["auc"] == audit.auc and body["auc_low"] == audit.auc_low and body["auc_high"] == audit.auc_high
    assert body["tpr_at_1pct_fpr"] is None and body["tpr_at_1pct_fpr_low"] is None
    assert body["n_nonmembers"] == 20 and body["nonmembers_available"] == audit.nonmembers_available
    assert body["bootstrap_resamples"] == 1000 and body["sampling_seed"] == 11
    assert "TPR at 1% FPR not reported: 1% FPR needs ≥ 100 non-members; this audit had 20." in body["notes"]

    listing = admin_client.get("/admin/mlops/modelversion/").content.decode()
    assert shown in listing
    page = admin_client.get(f"/admin/mlops/modelversion/{audited_version.pk}/change/").content.decode()
    assert shown in page and "1% FPR needs ≥ 100 non-members; this audit had 20." in page
    assert f"20 of {audit.members_available:,} members" in page

    path = tmp_path / "lineage.pdf"
    model_lineage_report_render(object_id=audited_version.pk, path=path)
    text = pdf_text(path.read_bytes())
    assert shown in text
    assert "1% FPR needs ≥ 100 non-members; this audit had 20." in text


@pytest.mark.django_db
def test_audits_from_before_intervals_say_so(audited_version, admin_client):
    audit = MembershipInferenceAudit.objects.create(
        model_version=audited_version, auc=0.5321, advantage=0.04, tpr_at_1pct_fpr=0.01, tpr_at_01pct_fpr=0.001,
        n_members=65, n_nonmembers=65,
    )
    assert audit.auc_text() == "AUC 0.53 (no interval: computed before intervals were recorded, 65 non-members)"
    page = admin_client.get(f"/admin/mlops/modelversion/{audited_version.pk}/change/").content.decode()
    assert "computed before intervals were recorded" in page


@pytest.mark.django_db
def test_the_dpia_pdf_prints_the_interval_and_why_a_tpr_is_missing(audited_version, tmp_path):
    from assessments import services as dpia_services
    from assessments.reports.dpia import dpia_report_render
    from tests.governance.reports_helpers import pdf_text

    audit = services.membership_inference_audit_run(model_version_id=audited_version.pk, max_examples=20)
    dpia = dpia_services.dpia_create(
        processing_activity=audited_version.training_run.snapshot.dataset.processing_activity, actor="dpo",
        model_version_ids=[audited_version.pk],
    )
    path = tmp_path / "dpia.pdf"
    dpia_report_render(object_id=dpia.pk, path=path)
    text = pdf_text(path.read_bytes())
    assert f"AUC {audit.auc:.2f} (95% CI {audit.auc_low:.2f}–{audit.auc_high:.2f}, 20 non-members)" in text
    assert f"{audit.auc:.2f} (95% CI {audit.auc_low:.2f}–{audit.auc_high:.2f})" in text  # the table cell, unbroken
    assert "1% FPR needs ≥ 100 non-members; this audit had 20." in text
    assert f"20 of {audit.members_available:,} members" in text


@pytest.mark.django_db
def test_the_migration_notes_what_earlier_audits_lack_and_keeps_their_figures(audited_version):
    import importlib

    from django.apps import apps

    earlier = MembershipInferenceAudit.objects.create(
        model_version=audited_version, auc=0.4987654321, advantage=0.04, tpr_at_1pct_fpr=0.0, tpr_at_01pct_fpr=0.0,
        n_members=200, n_nonmembers=65,
    )
    importlib.import_module("mlops.migrations.0007_mia_intervals").note_earlier_audits(apps, None)
    earlier.refresh_from_db()
    assert (earlier.auc, earlier.tpr_at_1pct_fpr, earlier.tpr_at_01pct_fpr) == (0.4987654321, 0.0, 0.0)
    assert earlier.notes[0].startswith("Computed before intervals were recorded")
    assert any("1% FPR needs ≥ 100 non-members and this audit had 65" in n for n in earlier.notes)
