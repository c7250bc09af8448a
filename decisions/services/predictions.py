"""Serving a model version's decisions: validate the rows against the dataset schema,
encode them as training did, predict, shape the output by the model's output policy,
explain, and record every decision in one transaction.

Nothing of the input is recorded but its keyed hash (``input_hash``), unless the processing
activity keeps inputs (``DecisionInputRetention``): then the validated row goes to
``DecisionInput`` with the date the purge deletes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from operator import itemgetter
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from decisions.models import Decision, DecisionInput, DecisionInputRetention
from decisions.serving import served_model
from governance.pseudonymisation import IdentifierError, pseudonymise_many
from governance.services import ServiceConflict, ServiceError, audit_event_record
from mlops.data import encode_rows
from mlops.models import ModelStatus, ModelVersion
from mlops.selectors import output_policy_for
from provenance.schema import RowError, record_validate

_INPUT_HASH_KEY_LABEL = b"privacy-ledger/decision-input/v1"
# provenance validates a record's features with its label; a prediction row has no label,
# so it is validated against the dataset's features with this stand-in label, always valid.
_NO_LABEL_SPEC = {"name": "label", "type": "float"}
TOP_FEATURES = 5


def input_hash_key() -> bytes:
    """``DECISION_INPUT_HASH_KEY`` if set, else derived from the pseudonymisation key
    (HMAC-SHA256 of a fixed label), read at call time."""
    explicit = settings.DECISION_INPUT_HASH_KEY
    if explicit:
        return explicit.encode()
    return hmac.new(settings.PSEUDONYMISATION_KEY.encode(), _INPUT_HASH_KEY_LABEL, hashlib.sha256).digest()


def canonical_row(row: dict) -> str:
    """The canonical JSON of a validated row (keys sorted, no spaces, UTF-8 as is), as
    provenance hashes a record's content."""
    return json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def input_hashes(rows: list[dict]) -> list[str]:
    base = hmac.new(input_hash_key(), digestmod=hashlib.sha256)
    out = []
    for row in rows:
        mac = base.copy()
        mac.update(canonical_row(row).encode("utf-8"))
        out.append(mac.hexdigest())
    return out


def _rows_validate(rows: Any, *, schema: dict) -> list[dict]:
    if not isinstance(rows, list) or not rows:
        raise ServiceError("rows: give a list of 1 to "
                           f"{settings.DECISION_MAX_ROWS:,} objects of feature values.", field="rows")
    if len(rows) > settings.DECISION_MAX_ROWS:
        raise ServiceError(f"rows: at most {settings.DECISION_MAX_ROWS:,} rows per request, got {len(rows):,}.",
                           field="rows")
    features_only = {"features": schema.get("features") or [], "label": _NO_LABEL_SPEC}
    bulk = _rows_validate_bulk(rows, features_only["features"])
    if bulk is not None:
        return bulk
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ServiceError(f"rows[{i}]: expected an object of feature values.", field=f"rows[{i}]")
        try:
            features, _ = record_validate(row, 0.0, features_only)
        except RowError as exc:
            raise ServiceError(f"rows[{i}].{exc.field}: {exc.reason}.", field=f"rows[{i}].{exc.field}") from None
        clean.append(features)
    return clean


def _rows_validate_bulk(rows: list, features: list[dict]) -> list[dict] | None:
    """The validated rows when every row passes, checked column by column in C (one set
    of types per column, one finiteness test per float column) rather than value by value
    (``record_validate`` on 10,000 rows of 100 features is a million Python calls). The
    same rows ``record_validate`` returns: keys in the schema's order, a float column's
    ints as floats, every other value as given. None as soon as anything is off, and the
    row-by-row validation then finds and names the first bad field."""
    names = [f["name"] for f in features]
    if not names:
        return None
    declared = set(names)
    for row in rows:
        if type(row) is not dict or row.keys() != declared:
            return None
    table = [(row[names[0]],) for row in rows] if len(names) == 1 else list(map(itemgetter(*names), rows))
    columns = list(zip(*table, strict=True))
    changed = False
    for j, spec in enumerate(features):
        column, kind = columns[j], spec["type"]
        types = set(map(type, column))
        if kind == "float":
            if not types <= {float, int}:
                return None
            if int in types:
                try:
                    column = columns[j] = tuple(map(float, column))
                except OverflowError:
                    return None
                changed = True
            if not np.isfinite(np.fromiter(column, np.float64, len(column))).all():
                return None
        elif kind == "int":
            if types != {int}:
                return None
        elif kind == "bool":
            if types != {bool}:
                return None
        elif types != {str} or not all(column) or ("categories" in spec and not set(column) <= set(spec["categories"])):
            return None
    if changed:
        table = zip(*columns, strict=True)
    return [dict(zip(names, values, strict=True)) for values in table]


def _subjects_pseudonymise(subjects: Any, *, n: int) -> list[str]:
    if subjects is None:
        return [""] * n
    if not isinstance(subjects, list) or len(subjects) != n:
        raise ServiceError(f"subjects: give one identifier (or null) per row: {n:,} expected.", field="subjects")
    given = [(i, s) for i, s in enumerate(subjects) if s is not None]
    for i, s in given:
        if not isinstance(s, str):
            raise ServiceError(f"subjects[{i}]: an identifier is a string (or null).", field=f"subjects[{i}]")
    try:
        pseudonyms = pseudonymise_many([s for _, s in given])
    except IdentifierError as exc:
        # pseudonymise_many names its own list's index; name the request's.
        index = given[int(exc.field.split("[")[1].rstrip("]"))][0]
        raise ServiceError(f"subjects[{index}]: {exc}.", field=f"subjects[{index}]") from None
    out = [""] * n
    for (i, _), pseudonym in zip(given, pseudonyms, strict=True):
        out[i] = pseudonym
    return out


# Shapley value sampling and KernelSHAP evaluate the model on many feature coalitions per
# row: offered for small inputs only (Integrated Gradients, one backward pass per path, for all).
SHAPLEY_METHODS = ("shapley_value_sampling", "kernel_shap")
SHAPLEY_MAX_FEATURES = 16
SHAPLEY_MAX_ROWS = 100


def _explain_method(method: Any, *, encoding: dict, n: int) -> str:
    from mlops.engine.explain import METHODS

    if method in (None, ""):
        return "integrated_gradients"
    if method not in METHODS:
        raise ServiceError(f"explain_method: one of {', '.join(METHODS)}.", field="explain_method")
    if method in SHAPLEY_METHODS:
        features = len(encoding.get("features") or [])
        if features > SHAPLEY_MAX_FEATURES or n > SHAPLEY_MAX_ROWS:
            raise ServiceError(
                f"explain_method: {method} is for small inputs (at most {SHAPLEY_MAX_FEATURES} features and "
                f"{SHAPLEY_MAX_ROWS} rows; this model has {features} features, the request {n} rows); use "
                "integrated_gradients.", field="explain_method")
    return method


def _explain_wanted(explain: Any, *, n: int) -> bool:
    if explain is None:
        return n <= settings.DECISION_EXPLAIN_DEFAULT_ROWS
    if not isinstance(explain, bool):
        raise ServiceError("explain: true or false.", field="explain")
    if explain and n > settings.DECISION_EXPLAIN_MAX_ROWS:
        raise ServiceError(f"explain: at most {settings.DECISION_EXPLAIN_MAX_ROWS:,} rows are explained per "
                           f"request, got {n:,}; send \"explain\": false or fewer rows.", field="explain")
    return explain


def model_version_servable(*, model_version: ModelVersion) -> None:
    """Refuse (409) a version that is not to be served, naming its status."""
    if model_version.status != ModelStatus.ACTIVE:
        raise ServiceConflict(
            f"Model version {model_version.pk} ({model_version}) is {model_version.get_status_display().lower()} "
            f"(status '{model_version.status}'): only active versions are served."
        )


def retention_in_force(*, processing_activity_id: int) -> DecisionInputRetention | None:
    """The activity's latest input-retention row when it keeps inputs (days > 0)."""
    latest = DecisionInputRetention.objects.filter(processing_activity_id=processing_activity_id).order_by("-id").first()
    return latest if latest is not None and latest.days > 0 else None


@dataclass
class _Explained:
    shown: list[dict | None]  # per row: the explanation answered
    stored: list[dict | None]  # per row: the summary recorded (no input value)


def _actionable(encoding: dict, schema: dict) -> list[str]:
    # A special-category feature (health, ethnicity…) is never suggested as something to change.
    special = {f["name"] for f in schema.get("features") or [] if f.get("special_category")}
    return [f["name"] for f in encoding.get("features") or [] if f["name"] not in special]


def _explanations(ensemble, X: np.ndarray, *, encoding: dict, schema: dict, classes: list,
                  method: str = "integrated_gradients") -> _Explained:
    from mlops.engine import explain as engine

    attr = engine.explain(ensemble, X, encoding=encoding, method=method)
    actionable = _actionable(encoding, schema)
    shown, stored = [], []
    for i in range(len(X)):
        top = engine.top_contributions(attr, i, k=TOP_FEATURES)
        delta = None if attr.convergence_delta is None else float(attr.convergence_delta[i])
        hint = engine.counterfactual_hint(ensemble, X[i], encoding=encoding, actionable=actionable)
        if hint is not None:
            hint = {**hint, "new_label": classes[hint["new_label_index"]]}
        shown.append({
            "method": attr.method, "target": classes[int(attr.targets[i])],
            "output": float(attr.output[i]), "baseline_output": float(attr.baseline_output[i]),
            "top_contributions": top, "convergence_delta": delta, "baseline_rule": engine.BASELINE_RULE,
            "counterfactual": hint,
        })
        stored.append({
            "method": attr.method,
            "top_features": [{"feature": t["feature"], "direction": t["direction"],
                              "contribution": round(t["contribution"], 4)} for t in top],
            "convergence_delta": None if delta is None else round(delta, 6),
            # Which feature a counterfactual would change, never its values (the "from" is an input).
            "counterfactual_feature": hint["feature"] if hint else None,
        })
    return _Explained(shown=shown, stored=stored)


def decisions_compute(*, ensemble, clean: list[dict], encoding: dict, kind: str, digits: int) -> tuple[np.ndarray, list[dict]]:
    """The database-free part of a decision: encode the validated rows as training did
    (the run's recorded encoding as the schema reproduces it exactly), predict, present
    under the output policy. Returns (X encoded, outputs); ``make bench`` times it."""
    # The engine (torch, Captum) is imported when a model is served, not when Django starts.
    from mlops.engine import explain as engine

    classes = list(encoding.get("classes") or [])
    names = [f["name"] for f in encoding.get("features") or []]
    # The values in the encoding's order, as lists (encode_rows takes them so): one C call
    # per row instead of a dict lookup per value; rows missing a feature go as they are.
    try:
        records = ([[row[names[0]]] for row in clean] if len(names) == 1
                   else [list(values) for values in map(itemgetter(*names), clean)] if names else clean)
    except (KeyError, TypeError):
        records = clean
    # No labels: the codes encode_rows would make of them are not needed here.
    X, _, _ = encode_rows(record_features=records, labels=[], schema=encoding, classes=classes)
    probabilities = engine.predict_proba(ensemble, X)
    return X, engine.present_output(probabilities, classes, kind=kind, digits=digits)


def decisions_make(
    *, model_version: ModelVersion, rows: Any, subjects: Any = None, explain: Any = None,
    explain_method: Any = None, actor: Any = None,
) -> dict:
    """Decide about each row with ``model_version`` and record the decisions (one
    transaction, one bulk insert, one audit event). Returns the answer of the predict API.

    Refused with 409 for a version that is not active; with 400 naming ``rows[i].feature``,
    ``subjects[i]``, ``explain`` or ``explain_method`` for bad input. Nothing is recorded
    when refused. ``explain_method``: integrated_gradients (default), or for small inputs
    shapley_value_sampling / kernel_shap.
    """
    model_version_servable(model_version=model_version)
    run = model_version.training_run
    dataset = run.snapshot.dataset
    clean = _rows_validate(rows, schema=dataset.schema or {})
    n = len(clean)
    pseudonyms = _subjects_pseudonymise(subjects, n=n)
    explaining = _explain_wanted(explain, n=n)
    encoding = run.encoding or {}
    method = _explain_method(explain_method, encoding=encoding, n=n)
    classes = list(encoding.get("classes") or [])
    ensemble = served_model(model_version=model_version)
    policy = output_policy_for(model_version=model_version)
    X, outputs = decisions_compute(ensemble=ensemble, clean=clean, encoding=encoding, kind=policy.kind,
                                   digits=policy.digits)
    explained = None
    if explaining and not policy.attributions_withheld:
        explained = _explanations(ensemble, X, encoding=encoding, schema=dataset.schema or {}, classes=classes,
                                  method=method)
    withheld = explaining and policy.attributions_withheld
    hashes = input_hashes(clean)
    retention = retention_in_force(processing_activity_id=dataset.processing_activity_id)

    batch = uuid.uuid4()
    now = timezone.now()
    stored_when_withheld = {"withheld": True, "reason": policy.withheld_because}
    decisions = [
        Decision(
            model_version=model_version, decided_at=now, batch=batch, position=i,
            outcome=str(outputs[i]["label"])[:200], output=outputs[i], output_policy=policy.kind,
            explanation=(explained.stored[i] if explained else stored_when_withheld if withheld else None),
            attributions_withheld=withheld, subject_pseudonym=pseudonyms[i], input_hash=hashes[i],
            requested_by=actor if getattr(actor, "pk", None) else None,
        )
        for i in range(n)
    ]
    with transaction.atomic():
        created = Decision.objects.bulk_create(decisions, batch_size=2000)
        if created and created[0].pk is None:  # a backend that returns no ids from bulk inserts
            ids = dict(Decision.objects.filter(batch=batch).values_list("position", "pk"))
            for d in created:
                d.pk = ids[d.position]
        if retention is not None:
            expires = now + timedelta(days=retention.days)
            DecisionInput.objects.bulk_create(
                [DecisionInput(decision_id=d.pk, features=clean[d.position], retention=retention, expires_at=expires)
                 for d in created],
                batch_size=2000,
            )
        audit_event_record(
            actor=actor, action="decisions.made", object_type="model_version", object_id=model_version.pk,
            details={"batch": str(batch), "decisions": n, "first_decision": created[0].pk,
                     "last_decision": created[-1].pk, "explained": bool(explained), "attributions_withheld": withheld,
                     "output_policy": policy.kind, "subjects_given": sum(1 for p in pseudonyms if p),
                     "inputs_kept_days": retention.days if retention else 0},
        )
    withheld_answer = {"withheld": True, "reason": policy.withheld_because}
    return {
        "model_version": model_version.pk,
        "batch": str(batch),
        "decided_at": now,
        "output_policy": {"kind": policy.kind, "digits": policy.digits, "source": policy.source,
                          "attributions_withheld": policy.attributions_withheld,
                          "withheld_because": policy.withheld_because},
        "inputs_kept_until": (now + timedelta(days=retention.days)) if retention else None,
        "decisions": [
            {"decision": d.pk, "output": outputs[d.position],
             "explanation": (explained.shown[d.position] if explained else withheld_answer if withheld else None)}
            for d in created
        ],
    }
