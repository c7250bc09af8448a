"""Small worlds for the workspace tests, built with the ORM: erasure requests in every
deadline state, model versions, budgets, DPIAs and consent withdrawals."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta

from django.utils import timezone

from assessments.models import Dpia
from governance.models import ConsentEvent, DataSubject, Purpose
from mlops.engine.accounting import epsilon_from_rdp, rdp_curve
from mlops.models import CanaryAudit, ModelVersion, PrivacyBudget, PrivacyLedgerTotal, TrainingRun
from provenance.models import Dataset
from rights.models import ErasureRequest, ErasureStep
from tests.rights.helpers import activity


def today() -> date:
    return timezone.localdate()


def erasure_request(
    *, due: date, status: str = "received", extended: date | None = None, received: datetime | None = None,
    completed: datetime | None = None, rejected: datetime | None = None, failed_step: bool = False,
) -> ErasureRequest:
    request = ErasureRequest.objects.create(
        identifier_receipt_hash=uuid.uuid4().hex, channel="letter", ground="17_1_a", status=status,
        received_at=received or timezone.now() - timedelta(days=10), due_at=due, extended_due_at=extended,
        completed_at=completed, rejected_at=rejected,
    )
    if failed_step:
        ErasureStep.objects.create(request=request, name="plan", status="failed", started_at=timezone.now(),
                                   error="the artifact store did not answer")
    return request


def training_run(*, name: str | None = None) -> TrainingRun:
    act = activity()
    dataset = Dataset.objects.create(name=f"ws-ds-{uuid.uuid4().hex[:8]}", owner="ml", processing_activity=act,
                                     schema={"features": [], "label": {"name": "y", "type": "int"}})
    from provenance.models import Snapshot

    snapshot = Snapshot.objects.create(
        dataset=dataset, purpose=act.purposes.first(), taken_for=timezone.now(), lawful_basis="consent",
        included_count=0, included_subjects=0, merkle_root="0" * 64, completed_at=timezone.now(),
    )
    return TrainingRun.objects.create(name=name or f"ws-run-{uuid.uuid4().hex[:8]}", snapshot=snapshot,
                                      target_delta=1e-5, status="succeeded")


def model_version(*, run: TrainingRun, version: int, status: str = "active", flagged: bool | None = None) -> ModelVersion:
    mv = ModelVersion.objects.create(
        training_run=run, name=run.name, version=version, artifact_path=f"x/{run.name}-{version}.safetensors",
        artifact_sha256="0" * 64, epsilon=1.0, delta=1e-5, status=status,
    )
    if flagged is not None:
        CanaryAudit.objects.create(
            model_version=mv, claimed_epsilon=1.0, epsilon_lower_bound=2.0 if flagged else 0.3, confidence=0.95,
            delta=1e-5, n_canaries=100, n_guesses=50, n_correct=45, flagged=flagged, seed=1,
        )
    return mv


CURVE = rdp_curve(noise_multiplier=1.0, sample_rate=0.01, steps=1000)
CURVE_EPSILON = epsilon_from_rdp(rdp=CURVE, delta=1e-5)


def budgeted_dataset(*, used: float, reserved: bool = False, non_private: bool = False) -> Dataset:
    """A dataset whose ledger total spends (or, with ``reserved``, reserves) ε = CURVE_EPSILON
    and whose cap makes that ``used`` of it."""
    act = activity()
    dataset = Dataset.objects.create(name=f"ws-budget-{uuid.uuid4().hex[:8]}", owner="ml", processing_activity=act,
                                     schema={"features": [], "label": {"name": "y", "type": "int"}})
    PrivacyBudget.objects.create(dataset=dataset, epsilon_cap=CURVE_EPSILON / used, delta=1e-5, set_at=timezone.now())
    PrivacyLedgerTotal.objects.create(
        dataset=dataset, spent_rdp=None if reserved else list(CURVE), reserved_rdp=list(CURVE) if reserved else None,
        spent_runs=0 if reserved else 1, reserved_runs=1 if reserved else 0, non_private_runs=1 if non_private else 0,
    )
    return dataset


def dpia(*, status: str, review_date: date | None = None, superseded: bool = False) -> Dpia:
    act = activity()
    first = Dpia.objects.create(processing_activity=act, title=f"DPIA {act.name}", status=status,
                                review_date=review_date)
    if superseded:
        Dpia.objects.create(processing_activity=act, title=first.title, version=2, previous_version=first)
    return first


def consent_withdrawn(*, at: datetime, action: str = "withdrawn") -> ConsentEvent:
    purpose, _ = Purpose.objects.get_or_create(code="ml.workspace_test", defaults={"name": "Workspace test"})
    subject = DataSubject.objects.create(pseudonym=f"ws-{uuid.uuid4().hex}")
    return ConsentEvent.objects.create(
        event_id=f"ws-{uuid.uuid4().hex}", subject=subject, purpose=purpose, action=action, occurred_at=at,
        notice_version="v1", notice_sha256="0" * 64, method="web_form",
    )
