"""Dataset schemas and record validation.

A schema is ``{"features": [{"name": str, "type": T, "categories": [...]?}], "label": {"name": str, "type": T}}``
with T one of float, int, bool, category. A numeric (float, int) feature may publish
scaling bounds ``"min"`` and ``"max"`` (both or neither, finite, min < max): training
clips its values to [min, max] and scales them to [0, 1] (``mlops.data.encode_rows``);
records outside the bounds are still accepted as they are. Any feature may carry
``"special_category": true`` (Art. 9(1)) and ``"sensitive": true`` (marked by the DPO),
the features attribute-inference audits target. Fields that directly identify a person are
refused (Art. 5(1)(c) data minimisation): the person is the record's subject, held as a
pseudonym, never a feature.

Content hash of a record: SHA-256 (hex) of the UTF-8 canonical JSON of
``{"features": {...}, "label": ...}`` with keys sorted, separators ``,`` and ``:``, no
ASCII escaping, and values normalised to their declared type first (a float feature
given as 1 is hashed as 1.0).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from governance.services import ServiceError

FEATURE_TYPES = ("float", "int", "bool", "category")
NUMERIC_TYPES = ("float", "int")
# Per-feature flags for the privacy audits (issue 15): ``special_category`` marks an
# Art. 9(1) special category of data (health, ethnicity, …), ``sensitive`` a feature the
# DPO wants attribute-inference audited for another reason. Neither changes training.
RISK_FLAGS = ("special_category", "sensitive")
FEATURE_ONLY_KEYS = frozenset({"min", "max", *RISK_FLAGS})
RESERVED_NAMES = {"subject"}
# Normalised names (lower case, non-alphanumerics folded to "_") that name a direct identifier.
DIRECT_IDENTIFIER_NAMES = {
    "email", "e_mail", "email_address", "mail",
    "name", "first_name", "last_name", "full_name", "surname", "given_name", "family_name",
    "phone", "phone_number", "telephone", "mobile", "mobile_number",
    "ssn", "social_security_number", "national_id", "national_insurance_number", "nhs_number",
    "passport", "passport_number", "tax_id",
    "address", "street_address", "home_address", "postal_address",
    "ip", "ip_address",
    "patient_id", "medical_record_number", "mrn", "customer_id", "user_id", "username",
    "device_id", "credit_card", "card_number", "iban",
}
MINIMISATION = "Art. 5(1)(c) data minimisation"
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")
BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _normalised_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond float range cannot bound a float column
        return False


def _feature_extras(spec: dict, ftype: str, path: str) -> dict:
    """A feature's published scaling bounds and its risk flags, checked; ``path`` is
    ``schema.features[i]`` so a refusal names the exact field."""
    out: dict = {}
    has_min, has_max = "min" in spec, "max" in spec
    if has_min or has_max:
        if ftype not in NUMERIC_TYPES:
            raise ServiceError(
                f"{path}.{'min' if has_min else 'max'}: bounds are for numeric features (float, int) only",
                field="schema",
            )
        if not (has_min and has_max):
            raise ServiceError(
                f"{path}.{'max' if has_min else 'min'}: give both min and max, or neither", field="schema"
            )
        for key in ("min", "max"):
            if not _finite_number(spec[key]):
                raise ServiceError(f"{path}.{key}: must be a finite number", field="schema")
        if not spec["max"] > spec["min"]:
            raise ServiceError(f"{path}.max: must be greater than min", field="schema")
        # Kept as given (an int stays an int): the record's canonical form is not touched.
        out.update(min=spec["min"], max=spec["max"])
    for flag in RISK_FLAGS:
        if flag in spec:
            if not isinstance(spec[flag], bool):
                raise ServiceError(f"{path}.{flag}: must be true or false", field="schema")
            if spec[flag]:
                out[flag] = True
    return out


def _field_spec(spec: Any, where: str, path: str | None = None) -> dict:
    if not isinstance(spec, dict):
        raise ServiceError(f"{where}: expected an object with 'name' and 'type'.", field="schema")
    name, ftype = spec.get("name"), spec.get("type")
    if isinstance(name, str) and (spec.get("identifier") is True or _normalised_name(name) in DIRECT_IDENTIFIER_NAMES):
        raise ServiceError(
            f"{where} '{name}' is a direct identifier and may not be stored ({MINIMISATION}): the person is "
            "given as the record's subject, which is pseudonymised on arrival.",
            field="schema",
        )
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ServiceError(
            f"{where}: 'name' must be 1-100 characters of letters, digits, '_', '.', '-', starting with a letter or '_'.",
            field="schema",
        )
    if ftype not in FEATURE_TYPES:
        raise ServiceError(f"{where} '{name}': 'type' must be one of {', '.join(FEATURE_TYPES)}.", field="schema")
    if name in RESERVED_NAMES:
        raise ServiceError(f"{where} '{name}': the name is reserved for the subject column.", field="schema")
    allowed = {"name", "type", "categories", "identifier", "description"}
    if path is not None:  # a feature, not the label: bounds and risk flags belong to inputs
        allowed |= FEATURE_ONLY_KEYS
    unknown = set(spec) - allowed
    if unknown:
        raise ServiceError(f"{where} '{name}': unknown keys {', '.join(sorted(unknown))}.", field="schema")
    out = {"name": name, "type": ftype}
    if path is not None:
        out.update(_feature_extras(spec, ftype, path))
    if "categories" in spec:
        categories = spec["categories"]
        if ftype != "category" or not isinstance(categories, list) or not categories or not all(
            isinstance(c, str) for c in categories
        ):
            raise ServiceError(
                f"{where} '{name}': 'categories' is a non-empty list of strings, for type category only.",
                field="schema",
            )
        out["categories"] = categories
    if isinstance(spec.get("description"), str):
        out["description"] = spec["description"]
    return out


def schema_validate(schema: Any) -> dict:
    """Return the normalised schema or raise ServiceError(field="schema")."""
    if not isinstance(schema, dict) or not isinstance(schema.get("features"), list) or not schema["features"]:
        raise ServiceError("The schema needs a non-empty 'features' list and a 'label'.", field="schema")
    if not isinstance(schema.get("label"), dict):
        raise ServiceError("The schema needs a 'label' object with 'name' and 'type'.", field="schema")
    features = [
        _field_spec(f, f"feature {i + 1}", f"schema.features[{i}]") for i, f in enumerate(schema["features"])
    ]
    label = _field_spec(schema["label"], "label")
    names = [f["name"] for f in features] + [label["name"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ServiceError(f"Field names must be unique; repeated: {', '.join(duplicates)}.", field="schema")
    return {"features": features, "label": label}


class RowError(Exception):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


def _coerce(value: Any, spec: dict, *, from_text: bool) -> Any:
    ftype = spec["type"]
    if from_text:
        text = value.strip() if isinstance(value, str) else value
        if text in ("", None):
            raise RowError(spec["name"], "a value is required")
        try:
            if ftype == "float":
                value = float(text)
            elif ftype == "int":
                value = int(text)
            elif ftype == "bool":
                if text.lower() not in BOOL_TEXT:
                    raise ValueError
                value = BOOL_TEXT[text.lower()]
            else:
                value = text
        except ValueError:
            raise RowError(spec["name"], f"expected {ftype}, got {text!r}")
    if value is None:
        raise RowError(spec["name"], "a value is required")
    if ftype == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RowError(spec["name"], f"expected float, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise RowError(spec["name"], "must be a finite number")
    elif ftype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise RowError(spec["name"], f"expected int, got {value!r}")
    elif ftype == "bool":
        if not isinstance(value, bool):
            raise RowError(spec["name"], f"expected bool, got {value!r}")
    else:
        if not isinstance(value, str) or not value:
            raise RowError(spec["name"], f"expected a non-empty category string, got {value!r}")
        if "categories" in spec and value not in spec["categories"]:
            raise RowError(spec["name"], f"{value!r} is not one of {', '.join(spec['categories'])}")
    return value


def record_validate(features: Any, label: Any, schema: dict, *, from_text: bool = False) -> tuple[dict, Any]:
    """Return (features, label) normalised to the schema, or raise RowError naming the field."""
    if not isinstance(features, dict):
        raise RowError("features", "expected an object of feature values")
    declared = {f["name"]: f for f in schema["features"]}
    unknown = sorted(set(features) - set(declared))
    if unknown:
        raise RowError(unknown[0], "not a feature of the dataset's schema")
    missing = [name for name in declared if name not in features]
    if missing:
        raise RowError(missing[0], "missing")
    clean = {name: _coerce(features[name], spec, from_text=from_text) for name, spec in declared.items()}
    return clean, _coerce(label, schema["label"], from_text=from_text)


def content_hash(features: dict, label: Any) -> str:
    canonical = json.dumps({"features": features, "label": label}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
