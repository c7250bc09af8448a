"""``ledger.private_training(...)``: Opacus training the ledger reserved, planned and records.

On enter the run is started in the ledger (its planned ε reserved on the dataset's budget),
and ``opacus.PrivacyEngine.make_private`` is called with the ledger's noise multiplier and
Poisson sampling over a loader of the planned batch size: Opacus then samples at
q = 1/len(loader) for len(loader) steps per epoch, which is the plan the ledger computed, so
the accountant history reported on exit gives the planned ε when every epoch was trained.
On an exception inside the block the run is failed in the ledger (its reservation released)
and the exception re-raised.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from privacy_ledger_client.client import ExternalRun, ReportResult, sha256_file
from privacy_ledger_client.errors import LedgerIntegrityError

if TYPE_CHECKING:  # pragma: no cover
    from privacy_ledger_client.client import LedgerClient


class PrivateTraining:
    """What ``with ledger.private_training(...) as training:`` yields.

    Train ``training.model`` with ``training.optimizer`` over ``training.data_loader`` (the
    private versions Opacus made); set ``training.metrics["accuracy"] = ...`` (numbers only)
    and optionally ``training.description`` and ``training.mlflow_run_id`` (by default the
    active MLflow run's, if any) before the block ends. After it: ``training.result`` is the ledger's answer (the registered model version).

    Arguments: ``snapshot`` (id), ``name``, ``epochs``, ``module``, ``optimizer`` (over the
    module's parameters), ``data_loader`` (default: the snapshot's export as a
    :class:`~privacy_ledger_client.data.SnapshotDataset` in batches of ``batch_size``),
    ``batch_size`` (default: the loader's), ``target_epsilon`` or ``noise_multiplier``,
    ``target_delta`` (default: the ledger's), ``max_grad_norm``, ``accountant`` ("rdp" or
    "prv"), ``description``, ``artifact_path`` (where the trained state_dict is saved; default
    a temporary file, kept, its path in ``training.artifact_path``), ``upload_artifact`` (send
    the file with the report), ``encoding`` (how inputs are encoded; the dataset's encoding
    by default when the loader is the client's), ``secure_mode`` and ``grad_sample_mode``
    (passed to Opacus).
    """

    def __init__(
        self,
        client: LedgerClient,
        *,
        snapshot: int,
        name: str,
        epochs: int,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader | None = None,
        batch_size: int | None = None,
        target_epsilon: float | None = None,
        noise_multiplier: float | None = None,
        target_delta: float | None = None,
        max_grad_norm: float = 1.0,
        accountant: str = "rdp",
        description: str | None = None,
        artifact_path: str | os.PathLike | None = None,
        upload_artifact: bool = False,
        encoding: dict | None = None,
        metrics: dict[str, float] | None = None,
        mlflow_run_id: str | None = None,
        secure_mode: bool = False,
        grad_sample_mode: str = "hooks",
    ) -> None:
        if target_epsilon is None and noise_multiplier is None:
            raise ValueError("give target_epsilon or noise_multiplier: private_training always trains with DP-SGD")
        if batch_size is None and getattr(data_loader, "batch_size", None) is None:
            raise ValueError("give batch_size (or a data_loader with a batch_size, which is then used)")
        self.client = client
        self.snapshot = int(snapshot)
        self.name = name
        self.epochs = int(epochs)
        self._module = module
        self._optimizer = optimizer
        self._data_loader = data_loader
        self.batch_size = int(batch_size if batch_size is not None else data_loader.batch_size)
        self.target_epsilon = target_epsilon
        self.noise_multiplier_requested = noise_multiplier
        self.target_delta = target_delta
        self.max_grad_norm = float(max_grad_norm)
        self.accountant = accountant
        self.description = description
        self.artifact_path: Path | None = Path(artifact_path) if artifact_path is not None else None
        self.upload_artifact = upload_artifact
        self.encoding = encoding
        self.metrics: dict[str, float] = dict(metrics or {})
        self.mlflow_run_id = mlflow_run_id
        self.secure_mode = secure_mode
        self.grad_sample_mode = grad_sample_mode
        self.dataset: Any = None
        self.run: ExternalRun | None = None
        self.engine: PrivacyEngine | None = None
        self.model: Any = None
        self.optimizer: Any = None
        self.data_loader: Any = None
        self.result: ReportResult | None = None

    # -- the context manager --------------------------------------------------------------

    def __enter__(self) -> PrivateTraining:
        loader = self._data_loader
        if loader is None:
            self.dataset = self.client.snapshot_dataset(self.snapshot)
            loader = DataLoader(self.dataset, batch_size=self.batch_size)
            if self.encoding is None:
                self.encoding = self.dataset.encoding
        elif loader.batch_size is not None and loader.batch_size != self.batch_size:
            raise ValueError(f"batch_size {self.batch_size} differs from the data_loader's {loader.batch_size}")
        self.run = self.client.start_external_run(
            snapshot=self.snapshot, name=self.name, epochs=self.epochs, batch_size=self.batch_size,
            target_epsilon=self.target_epsilon, noise_multiplier=self.noise_multiplier_requested,
            target_delta=self.target_delta, max_grad_norm=self.max_grad_norm, accountant=self.accountant,
            description=self.description,
        )
        try:
            self._check_plan(len(loader))
            self.engine = PrivacyEngine(accountant=self.accountant, secure_mode=self.secure_mode)
            self.model, self.optimizer, self.data_loader = self.engine.make_private(
                module=self._module, optimizer=self._optimizer, data_loader=loader,
                noise_multiplier=float(self.run.noise_multiplier), max_grad_norm=self.max_grad_norm,
                poisson_sampling=True, grad_sample_mode=self.grad_sample_mode,
            )
        except BaseException as exc:
            self._fail(exc)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc is not None:
            self._fail(exc)
            return False  # re-raised as it was
        self.report()
        return False

    # -- what the block may call ----------------------------------------------------------

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """Opacus's accountant history so far: [(noise_multiplier, sample_rate, steps), ...]."""
        if self.engine is None:
            return []
        return [(float(s), float(q), int(n)) for s, q, n in self.engine.accountant.history]

    def get_epsilon(self) -> float:
        """ε of the training so far at the run's δ, by Opacus's own accountant."""
        if self.engine is None or self.run is None:
            raise RuntimeError("the private training has not started")
        return float(self.engine.get_epsilon(self.run.target_delta))

    def report(self) -> ReportResult:
        """Report the history, metrics and artifact digest. Called on a normal exit; call it again
        after a refusal you resolved (a DPO approved an overspend) - the run stays open until its
        reservation expires."""
        if self.run is None or self.engine is None:
            raise RuntimeError("the private training has not started")
        artifact = self._save_artifact()
        if self.mlflow_run_id is None:
            self.mlflow_run_id = _active_mlflow_run_id()
        self.result = self.client.report_run(
            self.run.id, run_token=self.run.run_token, history=self.history, accountant=self.accountant,
            artifact_sha256=sha256_file(artifact), metrics=self.metrics, description=self.description,
            mlflow_run_id=self.mlflow_run_id, encoding=self.encoding,
            artifact_path=artifact if self.upload_artifact else None,
        )
        return self.result

    # -- internals ------------------------------------------------------------------------

    def _check_plan(self, batches: int) -> None:
        """Opacus samples at 1/len(loader) for len(loader) steps an epoch: refuse to train if that
        is not what the ledger planned (another record count or batch size), since the report
        would then not match the reservation."""
        run = self.run
        if run.noise_multiplier is None:
            raise LedgerIntegrityError(f"Run {run.id} has no noise multiplier: the ledger planned no DP-SGD.",
                                       "noise_multiplier")
        if batches == 0:
            raise LedgerIntegrityError("The data loader yields no batch.", "data_loader")
        if run.sample_rate is not None and not math.isclose(1.0 / batches, float(run.sample_rate), rel_tol=1e-9):
            raise LedgerIntegrityError(
                f"The ledger planned sample rate {run.sample_rate} but this loader of {batches} batches gives "
                f"Opacus 1/{batches} = {1.0 / batches}: the loader does not hold the snapshot's records in batches "
                f"of {self.batch_size}.", "sample_rate",
            )
        # Opacus's Poisson sampler takes int(1 / sample_rate) steps an epoch, one fewer than
        # the loader's batches where the float 1 / (1 / k) falls just below k (k = 93, 99, ...).
        per_epoch = int(1 / (1.0 / batches))
        if run.steps is not None and int(run.steps) != self.epochs * per_epoch:
            raise LedgerIntegrityError(
                f"The ledger planned {run.steps} steps, {self.epochs} epochs of {per_epoch} Poisson batches are "
                f"{self.epochs * per_epoch}.", "steps",
            )

    def _save_artifact(self) -> Path:
        # The user's own module, not Opacus's GradSampleModule wrapper: the saved state_dict
        # loads into the architecture the user defined.
        inner = getattr(self.model, "_module", self.model)
        if self.artifact_path is None:
            handle = tempfile.NamedTemporaryFile(prefix=f"ledger-run-{self.run.id}-", suffix=".pt", delete=False)  # noqa: SIM115
            handle.close()
            self.artifact_path = Path(handle.name)
        self.artifact_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(inner.state_dict(), self.artifact_path)
        return self.artifact_path

    def _fail(self, exc: BaseException) -> None:
        if self.run is None:
            return
        reason = "".join(traceback.format_exception_only(type(exc), exc)).strip() or type(exc).__name__
        try:
            self.client.fail_run(self.run.id, run_token=self.run.run_token, reason=f"client: {reason}")
        except Exception as fail_error:  # the training's own error is the one to raise
            exc.add_note(f"privacy-ledger: failing run {self.run.id} in the ledger also failed: {fail_error}")


def _active_mlflow_run_id() -> str | None:
    """The active MLflow run's id, when the training runs inside one: the ledger keeps it as
    lineage. MLflow is not imported for a user who does not use it."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None


def private_training(client: LedgerClient, **kwargs: Any) -> PrivateTraining:
    """Same as ``client.private_training(**kwargs)``."""
    return PrivateTraining(client, **kwargs)
