"""How figures are written for people in the workspace (admin pages): one home for rounding,
units, moments and labels, so no page prints ``2.9945933710672854`` or an ISO timestamp
with microseconds, and every page writes the same figure the same way.

The API keeps full precision; these are for pages and PDFs a person reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

DASH = "—"
SIGNIFICANT_DIGITS = 3


def number(value: Any, *, unit: str = "", digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` rounded to ``digits`` significant digits (at most 4), thousands separated:
    ``2.99``, ``0.0123``, ``12,300``; None → "—", ∞ → "∞". ``unit`` follows after a space."""
    if value is None or value == "":
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(x):
        return DASH
    if math.isinf(x):
        text = "∞" if x > 0 else "−∞"
    elif isinstance(value, int):
        text = f"{value:,}"  # a count is exact
    elif x == 0:
        text = "0"
    else:
        digits = max(1, min(4, digits))
        magnitude = math.floor(math.log10(abs(x)))
        decimals = digits - 1 - magnitude
        rounded = round(x, decimals)
        text = f"{rounded:,.{max(0, decimals)}f}"
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    return f"{text} {unit}".strip() if unit else text


def percent(value: Any, *, digits: int = SIGNIFICANT_DIGITS) -> str:
    """A share 0–1 as a percentage: 0.0312 → ``3.12%``."""
    if value is None:
        return DASH
    return f"{number(float(value) * 100, digits=digits)}%"


def epsilon(value: Any, *, non_private: bool = False) -> str:
    """ε for people: ``2.99``; ∞ for a model trained without differential privacy."""
    if non_private or value is None or (isinstance(value, float) and math.isinf(value)):
        return "∞ (not private)"
    return number(value)


def delta(value: Any) -> str:
    """δ in scientific notation, e.g. ``1e-5``."""
    if value is None:
        return DASH
    mantissa, exponent = f"{float(value):.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def moment(value: datetime | date | None) -> str:
    """``1 Dec 2026, 19:25 UTC`` (a date alone: ``1 Dec 2026``); never microseconds."""
    if value is None:
        return DASH
    if isinstance(value, datetime):
        if timezone.is_aware(value):
            value = value.astimezone(timezone.get_current_timezone())
        zone = value.strftime("%Z") or "UTC"
        return f"{value.day} {value:%b %Y, %H:%M} {zone}"
    return f"{value.day} {value:%b %Y}"


def label(choices: Any, value: Any) -> str:
    """The label of a choice value (``17_3_a`` → its words); the value itself if unknown."""
    if value in (None, ""):
        return DASH
    mapping = dict(getattr(choices, "choices", choices))
    return str(mapping.get(value, value))


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], *, empty: str = "None.") -> SafeString:
    """A small HTML table for a readonly field or a panel (cells escaped; a cell that is
    already safe HTML, e.g. a link from ``link``, is kept)."""
    rows = [list(r) for r in rows]
    if not rows:
        return format_html("<p>{}</p>", empty)
    head = format_html_join("", "<th>{}</th>", ((h,) for h in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((c,) for c in row)),) for row in rows)
    )
    return format_html('<table class="pl-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', head, body)


def action_words(action: str) -> str:
    """An audit action in words: ``model_version.registered`` → ``Model version registered``.
    The code stays in the audit log (admin, API), which auditors search by it."""
    if not action:
        return DASH
    words = action.replace(".", " ").replace("_", " ").strip()
    return f"{words[:1].upper()}{words[1:]}"


def link(url: str, text: Any) -> SafeString:
    return format_html('<a href="{}">{}</a>', url, text)


# Labels for the values audit-event details record as codes ("ground": "17_1_a"), by the
# detail's key. Each app registers its own choices (AppConfig.ready): governance, at the
# bottom of the layers, knows none of them.
_DETAIL_LABELS: dict[str, dict[str, str]] = {}
_ISO_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")


def detail_labels_register(key: str, choices: Any) -> None:
    """Show the detail ``key``'s values by ``choices``' labels on the workspace's pages."""
    _DETAIL_LABELS.setdefault(key, {}).update({str(k): str(v) for k, v in getattr(choices, "choices", choices)})


def detail_value(key: str, value: Any) -> str:
    """One value of a JSON detail for people: labels for codes, moments for timestamps,
    rounded numbers, yes/no; lists and nested objects joined in words."""
    if isinstance(value, dict):
        return "; ".join(f"{k.replace('_', ' ')}: {detail_value(k, v)}" for k, v in value.items()) or DASH
    if isinstance(value, list | tuple):
        return ", ".join(detail_value(key, v) for v in value) or DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    if value in (None, ""):
        return DASH
    text = str(value)
    labels = _DETAIL_LABELS.get(key)
    if labels and text in labels:
        return labels[text]
    if _ISO_MOMENT.match(text):
        try:
            return moment(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            return text
    return text
