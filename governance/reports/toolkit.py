"""The shared PDF toolkit: page template, building blocks and charts for every report.

Every report (DPIA, record of processing, model lineage, erasure certificate) is a list
of flowables made with these functions and written with :func:`render_pdf`, so they all
look alike and all come with the SHA-256 an auditor can check the file against.

PDFs are written in reportlab's invariant mode (no random document id, no creation
timestamp in the trailer), so the same content gives the same bytes and the same hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from django.utils import timezone
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Rect, String
from reportlab.graphics.widgets.markers import makeMarker
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as pdf_canvas
from reportlab.platypus import (
    CondPageBreak,
    Flowable,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

PAGE_SIZE = A4
MARGIN = 18 * mm
CONTENT_WIDTH = PAGE_SIZE[0] - 2 * MARGIN

INK = colors.HexColor("#1f2933")
MUTED = colors.HexColor("#616e7c")
ACCENT = colors.HexColor("#1d4e89")
RULE = colors.HexColor("#cbd2d9")
ZEBRA = colors.HexColor("#f5f7fa")
LEVEL_COLOURS = {
    "low": colors.HexColor("#8fd19e"),
    "medium": colors.HexColor("#ffd166"),
    "high": colors.HexColor("#ef6f6c"),
}
SERIES_COLOURS = [ACCENT, colors.HexColor("#d9480f"), colors.HexColor("#2b8a3e"), colors.HexColor("#862e9c")]

# DejaVu covers ε, δ, σ, ≤ and →; the PDF base fonts do not. Docker images and most Linux
# distributions ship it; without it the text falls back to Helvetica with Greek spelled out.
_FONT_CANDIDATES = [
    os.environ.get("REPORT_FONT_DIR", ""),
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/dejavu",
    "/usr/share/fonts/TTF",
]
_FALLBACK_REPLACEMENTS = {"ε": "epsilon", "δ": "delta", "σ": "sigma", "≤": "<=", "≥": ">=", "→": "->", "×": "x", "∞": "inf"}


def _register_fonts() -> tuple[str, str, bool]:
    for folder in _FONT_CANDIDATES:
        regular, bold = Path(folder or "/nonexistent") / "DejaVuSans.ttf", Path(folder or "/nonexistent") / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            pdfmetrics.registerFont(TTFont("PL-Sans", str(regular)))
            pdfmetrics.registerFont(TTFont("PL-Sans-Bold", str(bold)))
            return "PL-Sans", "PL-Sans-Bold", True
    return "Helvetica", "Helvetica-Bold", False


FONT, FONT_BOLD, UNICODE_FONT = _register_fonts()


def text(value: Any) -> str:
    """A value as display text: dates in ISO form, floats to 4 significant digits, None as a dash."""
    if value is None or value == "":
        result = "—"
    elif isinstance(value, bool):
        result = "yes" if value else "no"
    elif isinstance(value, datetime):
        result = timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z") if timezone.is_aware(value) else value.strftime("%Y-%m-%d %H:%M")
    elif isinstance(value, date):
        result = value.isoformat()
    elif isinstance(value, float):
        result = f"{value:.4g}"
    else:
        result = str(value)
    if not UNICODE_FONT:
        for char, spelled in _FALLBACK_REPLACEMENTS.items():
            result = result.replace(char, spelled)
        result = result.replace("—", "-")
    return result


STYLES = {
    "title": ParagraphStyle("title", fontName=FONT_BOLD, fontSize=20, leading=24, textColor=ACCENT, spaceAfter=4),
    "subtitle": ParagraphStyle("subtitle", fontName=FONT, fontSize=11, leading=14, textColor=MUTED, spaceAfter=10),
    "h1": ParagraphStyle("h1", fontName=FONT_BOLD, fontSize=14, leading=18, textColor=ACCENT, spaceBefore=12, spaceAfter=6),
    "h2": ParagraphStyle("h2", fontName=FONT_BOLD, fontSize=11, leading=14, textColor=INK, spaceBefore=8, spaceAfter=4),
    "body": ParagraphStyle("body", fontName=FONT, fontSize=9.5, leading=13, textColor=INK, spaceAfter=5, alignment=TA_LEFT),
    "note": ParagraphStyle("note", fontName=FONT, fontSize=8, leading=10.5, textColor=MUTED, spaceAfter=4),
    "cell": ParagraphStyle("cell", fontName=FONT, fontSize=8, leading=10, textColor=INK),
    "cell_bold": ParagraphStyle("cell_bold", fontName=FONT_BOLD, fontSize=8, leading=10, textColor=INK),
    "head": ParagraphStyle("head", fontName=FONT_BOLD, fontSize=8, leading=10, textColor=colors.white),
}


def _para(value: Any, style: str = "body") -> Paragraph:
    return Paragraph(escape(text(value)).replace("\n", "<br/>"), STYLES[style])


def paragraph(value: Any, *, style: str = "body") -> Paragraph:
    """Plain text (escaped; newlines kept) as a paragraph."""
    return _para(value, style)


def note(value: Any) -> Paragraph:
    return _para(value, "note")


def heading(value: str, *, level: int = 1) -> Flowable:
    """A section heading; a level-1 heading never sits alone at the foot of a page."""
    style = "h1" if level == 1 else "h2"
    flow = _para(value, style)
    return KeepTogether([CondPageBreak(40 * mm), flow]) if level == 1 else flow


def keep_together(*flows: Flowable) -> KeepTogether:
    """Flowables that must share a page, e.g. a chart and its heading."""
    return KeepTogether(list(flows))


def spacer(height_mm: float = 4) -> Spacer:
    return Spacer(1, height_mm * mm)


def page_break() -> PageBreak:
    return PageBreak()


def title_block(title: str, *, subtitle: str = "", facts: Sequence[tuple[str, Any]] = ()) -> list[Flowable]:
    """The report's first lines: title, subtitle and the identifying facts (reference, dates)."""
    flows: list[Flowable] = [_para(title, "title")]
    if subtitle:
        flows.append(_para(subtitle, "subtitle"))
    if facts:
        flows.append(key_value_table(facts))
    flows.append(spacer(2))
    return flows


def key_value_table(rows: Iterable[tuple[str, Any]], *, key_width: float = 55 * mm) -> Table:
    data = [[_para(key, "cell_bold"), _para(value, "cell")] for key, value in rows]
    table = Table(data, colWidths=[key_width, CONTENT_WIDTH - key_width], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, RULE),
                ("BACKGROUND", (0, 0), (0, -1), ZEBRA),
                ("TOPPADDING", (0, 0), (-1, -1), 3),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
            ]
        )
    )
    return table


def data_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, col_widths: Sequence[float] | None = None, empty: str = "None recorded."
) -> Flowable:
    """A table with a coloured header row repeated on each page; ``empty`` when there are no rows."""
    if not rows:
        return note(empty)
    if col_widths is None:
        col_widths = [CONTENT_WIDTH / len(header)] * len(header)
    else:
        total = sum(col_widths)
        col_widths = [CONTENT_WIDTH * w / total for w in col_widths]
    data = [[_para(h, "head") for h in header]] + [[_para(cell, "cell") for cell in row] for row in rows]
    table = Table(data, colWidths=col_widths, repeatRows=1, hAlign="LEFT")
    style = [
        ("BACKGROUND", (0, 0), (-1, 0), ACCENT),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LINEBELOW", (0, 0), (-1, -1), 0.25, RULE),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 3),
    ]
    style += [("BACKGROUND", (0, i), (-1, i), ZEBRA) for i in range(2, len(data), 2)]
    table.setStyle(TableStyle(style))
    return table


# --- Charts --------------------------------------------------------------------------


def _label(x: float, y: float, value: str, *, size: float = 8, anchor: str = "middle", bold: bool = False, colour=INK) -> String:
    return String(x, y, text(value), fontName=FONT_BOLD if bold else FONT, fontSize=size, textAnchor=anchor, fillColor=colour)


def risk_heat_map(
    counts: dict[tuple[str, str], int],
    *,
    likelihoods: Sequence[tuple[str, str]],
    severities: Sequence[tuple[str, str]],
    level_of: Any,
    title: str,
    width: float = 80 * mm,
) -> Drawing:
    """A 3×3 likelihood × severity grid coloured by risk level, each cell showing its number of risks.

    ``likelihoods``/``severities`` are (value, label) from lowest to highest; ``level_of(l, s)``
    gives the cell's level ("low" | "medium" | "high").
    """
    cell = (width - 30 * mm) / len(severities)
    height = cell * len(likelihoods) + 22 * mm
    drawing = Drawing(width, height)
    left, bottom = 24 * mm, 12 * mm
    drawing.add(_label(width / 2, height - 10, title, size=9, bold=True))
    for row, (lvalue, llabel) in enumerate(likelihoods):
        y = bottom + row * cell
        drawing.add(_label(left - 3, y + cell / 2 - 3, llabel, size=7, anchor="end"))
        for col, (svalue, _slabel) in enumerate(severities):
            x = left + col * cell
            level = str(level_of(lvalue, svalue))
            drawing.add(Rect(x, y, cell, cell, fillColor=LEVEL_COLOURS[level], strokeColor=colors.white, strokeWidth=1.5))
            n = counts.get((lvalue, svalue), 0)
            if n:
                drawing.add(_label(x + cell / 2, y + cell / 2 - 5, str(n), size=13, bold=True))
            drawing.add(_label(x + cell / 2, y + 3, level, size=6, colour=MUTED))
    for col, (_svalue, slabel) in enumerate(severities):
        drawing.add(_label(left + col * cell + cell / 2, bottom - 9, slabel, size=7))
    drawing.add(_label(left + cell * len(severities) / 2, 2, "severity →", size=7, colour=MUTED))
    drawing.add(_label(6, bottom + cell * len(likelihoods) + 3, "likelihood ↑", size=7, anchor="start", colour=MUTED))
    return drawing


def _line_plot(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: float,
    height: float,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    extra_lines: Sequence[tuple[Sequence[tuple[float, float]], Any]] = (),
    markers: bool = True,
) -> Drawing:
    drawing = Drawing(width, height)
    plot = LinePlot()
    plot.x, plot.y = 14 * mm, 12 * mm
    plot.width, plot.height = width - 20 * mm, height - 24 * mm
    data = [list(points) for _name, points in series if points] + [list(points) for points, _c in extra_lines]
    if not data:
        drawing.add(_label(width / 2, height / 2, f"{title}: no data recorded", size=9, colour=MUTED))
        return drawing
    plot.data = data
    for i in range(len(data)):
        is_extra = i >= len(data) - len(extra_lines)
        line = plot.lines[i]
        if is_extra:
            line.strokeColor = extra_lines[i - (len(data) - len(extra_lines))][1]
            line.strokeDashArray = [2, 2]
            line.strokeWidth = 0.6
        else:
            line.strokeColor = SERIES_COLOURS[i % len(SERIES_COLOURS)]
            line.strokeWidth = 1.4
            if markers:
                line.symbol = makeMarker("FilledCircle", size=3)
    for axis in (plot.xValueAxis, plot.yValueAxis):
        axis.labels.fontName = FONT
        axis.labels.fontSize = 7
        axis.strokeColor = MUTED
    if x_range:
        plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = x_range
    if y_range:
        plot.yValueAxis.valueMin, plot.yValueAxis.valueMax = y_range
    else:
        plot.yValueAxis.valueMin = 0
    drawing.add(plot)
    drawing.add(_label(width / 2, height - 10, title, size=9, bold=True))
    drawing.add(_label(plot.x + plot.width / 2, 1, x_label, size=7, colour=MUTED))
    y_axis_label = _label(0, 0, y_label, size=7, colour=MUTED)
    y_axis_label.x, y_axis_label.y = 4, plot.y + plot.height + 3
    y_axis_label.textAnchor = "start"
    drawing.add(y_axis_label)
    named = [(name, points) for name, points in series if points]
    if len(named) > 1:
        legend = Legend()
        legend.x, legend.y = plot.x + plot.width - 30 * mm, plot.y + 10 * mm
        legend.fontName, legend.fontSize = FONT, 7
        legend.colorNamePairs = [(SERIES_COLOURS[i % len(SERIES_COLOURS)], text(name)) for i, (name, _p) in enumerate(named)]
        drawing.add(legend)
    return drawing


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    cap: float | None = None,
    width: float = CONTENT_WIDTH / 2 - 4 * mm,
    height: float = 62 * mm,
) -> Drawing:
    """Lines through (x, y) points, e.g. ε spent after each epoch; ``cap`` draws a dashed ceiling."""
    extra = []
    if cap is not None:
        xs = [x for _n, points in series for x, _y in points] or [0, 1]
        extra.append(([(min(xs), cap), (max(xs), cap)], colors.HexColor("#c92a2a")))
    drawing = _line_plot(series, title=title, x_label=x_label, y_label=y_label, width=width, height=height, extra_lines=extra)
    return drawing


def roc_curve(
    curves: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    title: str = "Membership-inference ROC",
    width: float = CONTENT_WIDTH / 2 - 4 * mm,
    height: float = 62 * mm,
) -> Drawing:
    """ROC curves (false-positive rate, true-positive rate) against the chance diagonal."""
    return _line_plot(
        curves,
        title=title,
        x_label="false-positive rate",
        y_label="true-positive rate",
        width=width,
        height=height,
        x_range=(0, 1),
        y_range=(0, 1),
        extra_lines=[([(0.0, 0.0), (1.0, 1.0)], MUTED)],
        markers=False,
    )


def side_by_side(*drawings: Flowable) -> Table:
    """Charts next to each other on one row."""
    table = Table([list(drawings)], colWidths=[CONTENT_WIDTH / len(drawings)] * len(drawings), hAlign="LEFT")
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LEFTPADDING", (0, 0), (-1, -1), 0)]))
    return table


# --- Rendering -----------------------------------------------------------------------


class _NumberedCanvas(pdf_canvas.Canvas):
    """Defers page output so each footer can say "page n of N"."""

    def __init__(self, *args, report_title: str = "", generated_at: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self._saved_pages: list[dict] = []
        self._report_title = report_title
        self._generated_at = generated_at

    def showPage(self):  # noqa: N802 (reportlab's API)
        self._saved_pages.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        total = len(self._saved_pages)
        for state in self._saved_pages:
            self.__dict__.update(state)
            self._decorate(total)
            super().showPage()
        super().save()

    def _decorate(self, total: int) -> None:
        width, height = PAGE_SIZE
        self.saveState()
        self.setStrokeColor(RULE)
        self.setLineWidth(0.5)
        self.line(MARGIN, height - MARGIN + 4 * mm, width - MARGIN, height - MARGIN + 4 * mm)
        self.line(MARGIN, MARGIN - 6 * mm, width - MARGIN, MARGIN - 6 * mm)
        self.setFillColor(MUTED)
        self.setFont(FONT_BOLD, 7.5)
        self.drawString(MARGIN, height - MARGIN + 6 * mm, "Privacy Ledger")
        self.setFont(FONT, 7.5)
        self.drawRightString(width - MARGIN, height - MARGIN + 6 * mm, text(self._report_title))
        self.drawString(MARGIN, MARGIN - 10 * mm, text(f"Generated {self._generated_at}"))
        self.drawRightString(width - MARGIN, MARGIN - 10 * mm, f"Page {self._pageNumber} of {total}")
        self.restoreState()


def render_pdf(path: Path | str, flowables: list[Flowable], *, title: str, subject: str = "", author: str = "Privacy Ledger", generated_at: datetime | None = None) -> str:
    """Write ``flowables`` to ``path`` as a PDF with the house page template; return its SHA-256.

    The file is written beside its final name and moved into place, so a reader never
    sees a half-written report.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    generated = text(generated_at or timezone.now())
    partial = path.with_name(path.name + ".partial")
    doc = SimpleDocTemplate(
        str(partial),
        pagesize=PAGE_SIZE,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN,
        bottomMargin=MARGIN,
        title=text(title),
        subject=text(subject),
        author=author,
        creator="Privacy Ledger",
        invariant=1,
    )

    def make_canvas(*args, **kwargs):
        return _NumberedCanvas(*args, report_title=title, generated_at=generated, **kwargs)

    try:
        doc.build(list(flowables), canvasmaker=make_canvas)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)
    return file_sha256(path)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()
