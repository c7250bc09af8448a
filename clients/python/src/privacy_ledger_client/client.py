"""LedgerClient: the ledger's REST API for a training pipeline and a serving system.

Only ``requests`` is needed here; torch, pandas and mlflow are imported by the methods and
modules that use them, so a serving system that asks ``model_status`` installs nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from privacy_ledger_client.errors import LedgerError, LedgerIntegrityError, error_from_body
from privacy_ledger_client.merkle import schema_sha256

if TYPE_CHECKING:  # pragma: no cover - imported lazily at run time
    import pandas

    from privacy_ledger_client.data import SnapshotDataset
    from privacy_ledger_client.training import PrivateTraining

EXPORT_FORMATS = ("parquet", "csv", "jsonl")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SnapshotExport:
    """A snapshot's content written to ``path``, with what the ledger said it is.

    ``merkle_root`` is the root of the snapshot's current membership (after amendments): the
    value to record as the training data's digest. ``sha256`` is the file's own digest.
    """

    path: Path
    format: str
    snapshot_id: int
    merkle_root: str
    amendment: int
    records: int
    schema: Any
    sha256: str
    headers: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class ExternalRun:
    """An external run the ledger accepted: its budget is reserved until ``reservation_expires_at``.

    ``run_token`` is shown once, in this answer only: keep it to report or fail the run.
    Train with ``noise_multiplier`` over ``steps`` steps at ``sample_rate`` (Opacus's
    ``make_private(poisson_sampling=True)`` with a loader of the planned batch size does exactly
    that) and the report's ε equals ``planned_epsilon``.
    """

    id: int
    run_token: str
    status: str
    snapshot: int
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    planned_epsilon: float | None
    target_delta: float | None
    accountant: str
    reservation_expires_at: str | None
    export_url: str | None
    data: dict = field(repr=False)


@dataclass(frozen=True)
class ReportResult:
    """The settled run and the model version the ledger registered for it."""

    run: dict
    model_version: dict

    @property
    def model_version_id(self) -> int:
        return int(self.model_version["id"])

    @property
    def epsilon(self) -> float | None:
        """ε as the ledger recomputed it from the history at the run's δ."""
        return self.model_version.get("epsilon")


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model version may be served now. A serving system refuses it unless ``servable``."""

    id: int
    name: str
    version: int
    status: str
    servable: bool
    reason: str
    status_changed_at: str | None
    data: dict = field(repr=False)


class LedgerClient:
    """The ledger's API, authenticated by an API key (``Authorization: Token <key>``).

    ``base_url`` is the server's root (``http://127.0.0.1:8000``) or its API root
    (``.../api/v1``). ``timeout`` is seconds to connect and between bytes received; an export
    streams, so its total time is not bounded by it. Every refusal raises :class:`LedgerError`
    with the server's message and the field it names.
    """

    def __init__(self, base_url: str, api_key: str, timeout: float = 60.0, session: requests.Session | None = None) -> None:
        root = base_url.rstrip("/")
        if not root.endswith("/api/v1"):
            root = f"{root}/api/v1"
        self.api_root = root
        self.timeout = timeout
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Token {api_key}", "Accept": "application/json"})

    def close(self) -> None:
        """Close the kept-alive connections (also on leaving ``with LedgerClient(...) as ledger:``)."""
        self.session.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """The absolute URL of an API path (``/snapshots/1/`` or ``/api/v1/snapshots/1/``)."""
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/api/v1/"):
            path = path[len("/api/v1"):]
        return f"{self.api_root}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, expect: Sequence[int] = (200,), **kwargs: Any) -> Any:
        """One call; the decoded JSON answer, or :class:`LedgerError` for any other status."""
        kwargs.setdefault("timeout", self.timeout)
        response = self.session.request(method, self.url(path), **kwargs)
        if response.status_code not in expect:
            raise self._error(response)
        if not response.content:
            return None
        return response.json()

    @staticmethod
    def _error(response: requests.Response) -> LedgerError:
        try:
            body = response.json()
        except ValueError:
            body = None
        fallback = (response.text or response.reason or "").strip()[:500] or f"HTTP {response.status_code}"
        return error_from_body(response.status_code, body, fallback)

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict]:
        """Every item of a paged list, following ``next`` (a bounded page never looks like the whole answer)."""
        url: str | None = self.url(path)
        query = dict(params or {})
        query.setdefault("limit", 1000)
        while url is not None:
            page = self.request("GET", url, params=query)
            query = None  # ``next`` carries the query string
            if isinstance(page, list):
                yield from page
                return
            yield from page.get("results", [])
            url = page.get("next")

    # -- snapshots ------------------------------------------------------------------------

    def snapshots(self, **filters: Any) -> list[dict]:
        """Snapshots readable by this key, newest first (filters as the API's, e.g. ``dataset=3``)."""
        return list(self._pages("snapshots/", filters))

    def snapshot(self, snapshot_id: int) -> dict:
        return self.request("GET", f"snapshots/{int(snapshot_id)}/")

    def dataset(self, dataset_id: int) -> dict:
        return self.request("GET", f"datasets/{int(dataset_id)}/")

    def export_snapshot(self, snapshot_id: int, format: str = "parquet", path: str | os.PathLike | None = None) -> SnapshotExport:  # noqa: A002 - the API's parameter name
        """Stream the snapshot's current members to a file and check what arrived.

        ``path``: a file, a directory (the server's ``snapshot-<id>.<ext>`` is written in it) or
        None (the current directory). The file appears under its name only once complete and
        checked: the headers name this snapshot and a Merkle root, and the rows received are as
        many as the ledger counted. A mismatch raises :class:`LedgerIntegrityError` and leaves no file.
        """
        if format not in EXPORT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
        response = self.session.get(
            self.url(f"snapshots/{int(snapshot_id)}/export/"), params={"format": format}, stream=True, timeout=self.timeout,
            headers={"Accept": "*/*"},
        )
        with response:
            if response.status_code != 200:
                raise self._error(response)
            headers = dict(response.headers.items())
            meta = _export_headers(headers, snapshot_id)
            target = _export_target(path, snapshot_id, format)
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in response.iter_content(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                rows = _count_rows(Path(partial), format, meta)
                if rows != meta["records"]:
                    raise LedgerIntegrityError(
                        f"The export of snapshot {snapshot_id} holds {rows} rows but the ledger counted "
                        f"{meta['records']} (X-Ledger-Records): the download was cut or altered.", "X-Ledger-Records",
                    )
                os.replace(partial, target)
            except BaseException:
                Path(partial).unlink(missing_ok=True)
                raise
        return SnapshotExport(path=target, format=format, sha256=digest.hexdigest(), headers=headers, **meta)

    def snapshot_dataset(self, snapshot_id: int, *, path: str | os.PathLike | None = None,
                         verify: bool = True) -> SnapshotDataset:
        """The snapshot as a ``torch.utils.data.Dataset`` of (features float tensor, label long).

        Needs the ``torch`` extra. Features come in schema order, encoded as the ledger's own
        engine encodes them (see :mod:`privacy_ledger_client.data`). ``path`` keeps the JSON
        Lines export there; by default it is read from a temporary file and removed.
        ``verify``: check the schema against the export's ``X-Ledger-Schema`` and recompute the
        Merkle root from the rows (:class:`LedgerIntegrityError` if either differs).
        """
        from privacy_ledger_client.data import SnapshotDataset

        schema = self._schema_of(snapshot_id)

        def read(export: SnapshotExport) -> SnapshotDataset:
            stated = export.schema if isinstance(export.schema, str) and _HEX64.match(export.schema) else None
            if verify and stated is not None and schema_sha256(schema) != stated:
                raise LedgerIntegrityError(
                    f"The dataset's schema (SHA-256 {schema_sha256(schema)}) is not the one snapshot "
                    f"{snapshot_id} was exported with (X-Ledger-Schema {stated}).", "X-Ledger-Schema",
                )
            return SnapshotDataset.from_jsonl(export, schema, verify=verify)

        if path is not None:
            return read(self.export_snapshot(snapshot_id, "jsonl", path))
        with tempfile.TemporaryDirectory(prefix="ledger-export-") as tmp:
            return read(self.export_snapshot(snapshot_id, "jsonl", tmp))

    def snapshot_frame(self, snapshot_id: int, *, path: str | os.PathLike | None = None) -> pandas.DataFrame:
        """The snapshot as a pandas DataFrame (``record_id``, features, label), read from the
        Parquet export (needs the ``pandas`` extra). ``frame.attrs["ledger"]`` holds the snapshot
        id, Merkle root, amendment and record count."""
        import pandas as pd

        def read(export: SnapshotExport) -> pandas.DataFrame:
            frame = pd.read_parquet(export.path)
            frame.attrs["ledger"] = {
                "snapshot": export.snapshot_id, "merkle_root": export.merkle_root, "amendment": export.amendment,
                "records": export.records, "schema": export.schema,
            }
            return frame

        if path is not None:
            return read(self.export_snapshot(snapshot_id, "parquet", path))
        with tempfile.TemporaryDirectory(prefix="ledger-export-") as tmp:
            return read(self.export_snapshot(snapshot_id, "parquet", tmp))

    def _schema_of(self, snapshot_id: int) -> dict:
        snapshot = self.snapshot(snapshot_id)
        return self.dataset(snapshot["dataset"])["schema"]

    # -- external runs --------------------------------------------------------------------

    def start_external_run(
        self,
        *,
        snapshot: int | None = None,
        dataset: int | None = None,
        purpose: str | None = None,
        name: str = "",
        epochs: int,
        batch_size: int,
        target_epsilon: float | None = None,
        noise_multiplier: float | None = None,
        target_delta: float | None = None,
        max_grad_norm: float = 1.0,
        accountant: str = "rdp",
        allow_non_private: bool = False,
        remediates: int | None = None,
        description: str | None = None,
    ) -> ExternalRun:
        """Reserve the run's planned ε on the dataset's budget (409 over budget) and get its plan and token."""
        body: dict[str, Any] = {
            "executor": "external", "name": name, "epochs": epochs, "batch_size": batch_size,
            "max_grad_norm": max_grad_norm, "accountant": accountant, "allow_non_private": allow_non_private,
        }
        optional = {
            "snapshot": snapshot, "dataset": dataset, "purpose": purpose, "target_epsilon": target_epsilon,
            "noise_multiplier": noise_multiplier, "target_delta": target_delta, "remediates": remediates,
            "description": description,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        data = self.request("POST", "training-runs/", json=body, expect=(201,))
        return ExternalRun(
            id=int(data["id"]), run_token=data["run_token"], status=data.get("status", ""), snapshot=int(data["snapshot"]),
            noise_multiplier=data.get("noise_multiplier"), sample_rate=data.get("sample_rate"), steps=data.get("steps"),
            planned_epsilon=data.get("planned_epsilon"), target_delta=data.get("target_delta"),
            accountant=data.get("accountant") or accountant, reservation_expires_at=data.get("reservation_expires_at"),
            export_url=data.get("export_url"), data=data,
        )

    def report_run(
        self,
        run_id: int,
        *,
        run_token: str,
        history: Sequence[Sequence[float]],
        accountant: str = "rdp",
        artifact_sha256: str,
        metrics: dict[str, float] | None = None,
        description: str | None = None,
        mlflow_run_id: str | None = None,
        encoding: dict | None = None,
        artifact_path: str | os.PathLike | None = None,
    ) -> ReportResult:
        """Report what the run spent: Opacus's accountant history ``[(σ, q, steps), ...]``.

        The ledger recomputes ε itself from the history (no ε is sent), settles the budget and
        registers the model version. ``artifact_path`` also uploads the file (multipart).
        """
        body: dict[str, Any] = {
            "run_token": run_token,
            "accountant": accountant,
            "history": [[float(sigma), float(q), int(steps)] for sigma, q, steps in history],
            "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
            "artifact_sha256": artifact_sha256,
        }
        optional = {"description": description, "mlflow_run_id": mlflow_run_id, "encoding": encoding}
        body.update({k: v for k, v in optional.items() if v is not None})
        url = f"training-runs/{int(run_id)}/report/"
        if artifact_path is None:
            data = self.request("POST", url, json=body, expect=(200, 201))
        else:
            with open(artifact_path, "rb") as handle:
                data = self.request(
                    "POST", url, expect=(200, 201),
                    files={"file": (Path(artifact_path).name, handle, "application/octet-stream"),
                           "report": (None, json.dumps(body), "application/json")},
                )
        return ReportResult(run=data.get("run", {}), model_version=data.get("model_version", {}))

    def fail_run(self, run_id: int, *, run_token: str, reason: str) -> dict:
        """Mark the run failed; the ledger releases its reservation."""
        # The ledger stores no NUL or unpaired surrogate (refused 400): an exception's text may hold them.
        reason = reason.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")[:2000] or "failed"
        return self.request(
            "POST", f"training-runs/{int(run_id)}/fail/", json={"run_token": run_token, "reason": reason},
            expect=(200, 201),
        )

    def approve_overspend(self, run_id: int, *, epsilon_limit: float, reason: str) -> dict:
        """(DPO key) Allow the run's report to spend up to ``epsilon_limit`` (the dataset cap still holds)."""
        return self.request(
            "POST", f"training-runs/{int(run_id)}/approve-overspend/",
            json={"epsilon_limit": epsilon_limit, "reason": reason}, expect=(200, 201),
        )

    def training_run(self, run_id: int) -> dict:
        return self.request("GET", f"training-runs/{int(run_id)}/")

    def private_training(self, **kwargs: Any) -> PrivateTraining:
        """Context manager: reserve budget, train with Opacus, report on exit, fail the run on an
        exception. See :func:`privacy_ledger_client.training.private_training` for the arguments."""
        from privacy_ledger_client.training import PrivateTraining

        return PrivateTraining(self, **kwargs)

    # -- models ---------------------------------------------------------------------------

    def model(self, version_id: int) -> dict:
        return self.request("GET", f"models/{int(version_id)}/")

    def model_status(self, version_id: int) -> ModelStatus:
        """Whether the version may be served now (false once tainted, stale, superseded or retired)."""
        data = self.request("GET", f"models/{int(version_id)}/status/")
        return _model_status(data)

    def retire_model(self, version_id: int, *, reason: str) -> ModelStatus:
        """(The run's owner or a DPO) Take the version out of service for good, e.g. a model
        trained outside the ledger that its owner will not retrain after an erasure: an erasure
        waiting for it then resumes and certifies the retirement."""
        data = self.request("POST", f"models/{int(version_id)}/retire/", json={"reason": reason}, expect=(200,))
        return _model_status(data)

    def models_changed_since(self, moment: datetime, **filters: Any) -> list[dict]:
        """Model versions whose status changed at or after ``moment`` (a timezone-aware datetime)."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("moment must be timezone-aware (e.g. datetime.now(timezone.utc)): a naive time is ambiguous")
        return list(self._pages("models/", {"changed_since": moment.isoformat(), **filters}))


def _model_status(data: dict) -> ModelStatus:
    return ModelStatus(
        id=int(data["id"]), name=data.get("name", ""), version=int(data.get("version") or 0),
        status=data.get("status", ""), servable=bool(data.get("servable")), reason=data.get("reason") or "",
        status_changed_at=data.get("status_changed_at"), data=data,
    )


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _export_target(path: str | os.PathLike | None, snapshot_id: int, format: str) -> Path:  # noqa: A002
    name = f"snapshot-{int(snapshot_id)}.{format}"
    if path is None:
        return Path.cwd() / name
    target = Path(path)
    return target / name if target.is_dir() else target


def _export_headers(headers: dict[str, str], snapshot_id: int) -> dict[str, Any]:
    lower = {k.lower(): v for k, v in headers.items()}

    def need(name: str) -> str:
        value = lower.get(name.lower())
        if value is None:
            raise LedgerIntegrityError(f"The export of snapshot {snapshot_id} came without its {name} header.", name)
        return value.strip()

    sent_id = need("X-Ledger-Snapshot")
    if sent_id != str(int(snapshot_id)):
        raise LedgerIntegrityError(f"Asked for snapshot {snapshot_id}, the export is of snapshot {sent_id}.",
                                   "X-Ledger-Snapshot")
    root = need("X-Ledger-Merkle-Root").lower()
    if not _HEX64.match(root):
        raise LedgerIntegrityError(f"X-Ledger-Merkle-Root is not a SHA-256 hex digest: {root!r}.", "X-Ledger-Merkle-Root")
    try:
        records = int(need("X-Ledger-Records"))
        amendment = int(need("X-Ledger-Amendment"))
    except ValueError as exc:
        raise LedgerIntegrityError(f"A count header of the export is not a whole number: {exc}.")
    return {
        "snapshot_id": int(snapshot_id), "merkle_root": root, "amendment": amendment, "records": records,
        "schema": _schema_header(lower.get("x-ledger-schema")),
    }


def _schema_header(value: str | None) -> Any:
    """The schema as the export states it: JSON (percent- or base64url-encoded) when it fits a
    header, else the SHA-256 of the schema's JSON; returned decoded when it decodes."""
    if not value:
        return None
    value = value.strip()
    candidates = [urllib.parse.unquote(value)]
    with contextlib.suppress(ValueError, UnicodeDecodeError):
        candidates.append(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8"))
    for text in candidates:
        try:
            decoded = json.loads(text)
        except ValueError:
            continue
        if isinstance(decoded, dict):
            return decoded
    return value


def _count_rows(path: Path, format: str, meta: dict[str, Any]) -> int:  # noqa: A002
    if format == "jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    if format == "csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return max(sum(1 for _ in csv.reader(handle)) - 1, 0)
    try:
        import pyarrow.parquet as pq
    except ImportError:  # without the pandas extra the file is kept unread; the header count stands
        return meta["records"]
    parquet = pq.ParquetFile(path)
    stated = {k.decode(): v.decode() for k, v in (parquet.schema_arrow.metadata or {}).items()}
    if stated.get("ledger.merkle_root", meta["merkle_root"]) != meta["merkle_root"]:
        raise LedgerIntegrityError("The Parquet file's ledger.merkle_root differs from the X-Ledger-Merkle-Root header.",
                                   "ledger.merkle_root")
    return parquet.metadata.num_rows
