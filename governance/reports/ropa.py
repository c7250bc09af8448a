"""The record of processing activities (Art. 30(1)) as a PDF and as CSV."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from django.utils import timezone

from governance.reports import selectors
from governance.reports import toolkit as tk


def _activity_section(number: int, e: dict[str, Any]) -> list:
    flows = [tk.heading(f"{number}. {e['name']}")]
    if e["description"]:
        flows.append(tk.paragraph(e["description"]))
    flows.append(tk.heading("30(1)(a) Controller and contacts", level=2))
    flows.append(
        tk.key_value_table(
            [
                ("Controller", e["controller_name"]),
                ("Controller contact", e["controller_contact"]),
                ("Joint controller", e["joint_controller"]),
                ("Representative (Art. 27)", e["representative"]),
                ("Data protection officer", e["dpo_contact"]),
            ]
        )
    )
    flows.append(tk.heading("30(1)(b) Purposes of the processing", level=2))
    flows.append(tk.data_table(["Purpose code", "Purpose"], [[p["code"], p["name"]] for p in e["purposes"]]))
    flows.append(
        tk.key_value_table(
            [("Lawful basis (Art. 6(1))", e["lawful_basis"]), ("Art. 9(2) condition", e["special_category_condition"])]
        )
    )
    flows.append(tk.heading("30(1)(c) Categories of data subjects and of personal data", level=2))
    flows.append(
        tk.data_table(
            ["Data-subject category", "Name", "Vulnerable"],
            [[c["code"], c["name"], c["vulnerable"]] for c in e["data_subject_categories"]],
        )
    )
    flows.append(
        tk.data_table(
            ["Data category", "Name", "Art. 9 special category", "Art. 10"],
            [[c["code"], c["name"], c["special_category"], c["criminal_offence_data"]] for c in e["data_categories"]],
        )
    )
    flows.append(tk.heading("30(1)(d) Categories of recipients", level=2))
    flows.append(
        tk.data_table(
            ["Recipient", "Third country or international organisation"],
            [[r["name"], r["third_country"]] for r in e["recipients"]],
            empty="No recipients recorded.",
        )
    )
    flows.append(tk.heading("30(1)(e) Transfers to third countries and safeguards", level=2))
    flows.append(
        tk.data_table(
            ["Country", "Safeguard (Art. 46, 49)"],
            [[t["country"], t["safeguard"]] for t in e["third_country_transfers"]],
            empty="No transfers to third countries.",
        )
    )
    flows.append(tk.heading("30(1)(f) Time limits for erasure", level=2))
    flows.append(
        tk.data_table(
            ["Data category", "Erased after"], [[r["data_category"], r["retention"]] for r in e["retention"]],
            empty="No retention period recorded.",
        )
    )
    flows.append(tk.heading("30(1)(g) Technical and organisational security measures (Art. 32(1))", level=2))
    flows.append(tk.paragraph(e["security_measures"]))
    flows.append(tk.note(f"Record last changed {tk.text(e['updated_at'])}."))
    return flows


def ropa_flowables(entries: list[dict[str, Any]]) -> list:
    now = timezone.now()
    controllers = sorted({e["controller_name"] for e in entries})
    flows = tk.title_block(
        "Record of processing activities",
        subtitle="Article 30(1) GDPR: one section per processing activity.",
        facts=[
            ("Controller(s)", ", ".join(controllers)),
            ("Processing activities", len(entries)),
            ("As of", now),
        ],
    )
    flows.append(tk.heading("Contents", level=2))
    flows.append(tk.data_table(["#", "Processing activity", "Purposes"], [
        [i, e["name"], ", ".join(p["code"] for p in e["purposes"])] for i, e in enumerate(entries, 1)
    ], empty="No processing activities recorded."))
    for i, e in enumerate(entries, 1):
        flows.extend(_activity_section(i, e))
    return flows


def ropa_report_render(*, object_id: Any = None, path: Path) -> str:
    """Render the whole record of processing activities; returns the PDF's SHA-256."""
    entries = selectors.ropa_entries()
    return tk.render_pdf(path, ropa_flowables(entries), title="Record of processing activities (Art. 30)")


def _cell(value: str) -> str:
    # A spreadsheet would run a cell starting with one of these as a formula (CSV injection).
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def ropa_csv(*, entries: list[dict[str, Any]] | None = None) -> str:
    """The record of processing activities as CSV text (one row per activity)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([[_cell(v) for v in row] for row in selectors.ropa_csv_rows(entries=entries)])
    return buffer.getvalue()
