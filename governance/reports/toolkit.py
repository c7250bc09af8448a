"""The shared PDF toolkit: page template, building blocks and charts for every report.

Every report (DPIA, record of processing, model lineage, erasure certificate) is a list
of flowables made with these functions and written with :func:`render_pdf`, so they all
look alike and all come with the SHA-256 an auditor can check the file against.

PDFs are written in reportlab's invariant mode (no random document id, no creation
timestamp in the trailer), so the same content gives the same bytes and the same hash.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
    Flowable,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.doctemplate import ActionFlowable, FrameBreak

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


def _register_fonts() -> tuple[str, str, str, bool]:
    for folder in _FONT_CANDIDATES:
        base = Path(folder or "/nonexistent")
        regular, bold, mono = base / "DejaVuSans.ttf", base / "DejaVuSans-Bold.ttf", base / "DejaVuSansMono.ttf"
        if regular.is_file() and bold.is_file():
            pdfmetrics.registerFont(TTFont("PL-Sans", str(regular)))
            pdfmetrics.registerFont(TTFont("PL-Sans-Bold", str(bold)))
            mono_name = "Courier"
            if mono.is_file():
                pdfmetrics.registerFont(TTFont("PL-Mono", str(mono)))
                mono_name = "PL-Mono"
            return "PL-Sans", "PL-Sans-Bold", mono_name, True
    return "Helvetica", "Helvetica-Bold", "Courier", False


# Hashes (SHA-256 digests, Merkle roots, audit-chain hashes) are set in MONO; the ellipsis of
# their short form is in DejaVu Sans Mono, and Courier's fallback has it in WinAnsi too.
FONT, FONT_BOLD, MONO, UNICODE_FONT = _register_fonts()
HASH_SHOWN = 12  # hex digits of a hash shown in the body; the appendix has it in full


@dataclass(frozen=True)
class Hash:
    """A hash shown shortened in monospace, with its full value in the document's appendix.

    ``label`` says where it is used ("Merkle root of snapshot #3"); a table fills it in
    from the column header or the row's key when left empty.
    """

    value: str
    label: str = ""
    full: bool = False  # the appendix shows the whole value

    @property
    def short(self) -> str:
        if self.full or len(self.value) <= HASH_SHOWN + 1:
            return self.value
        return self.value[:HASH_SHOWN] + "…"


class Rich(tuple):
    """Text and hashes in one paragraph or cell: ``rich("head ", hash_cell(h))``."""


def hash_cell(value: str | None, *, label: str = "") -> Hash | str:
    """A hash for a table cell or :func:`rich` text: shortened, monospaced, listed in full at the end."""
    return Hash(str(value), label) if value else "—"


def rich(*parts: Any) -> Rich:
    return Rich(parts)


def text(value: Any) -> str:
    """A value as display text: dates in ISO form, floats to 4 significant digits, None as a dash."""
    if value is None or value == "":
        result = "—"
    elif isinstance(value, Hash):
        result = value.short
    elif isinstance(value, Rich):
        result = "".join(text(part) for part in value)
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


# Words are never split across lines: reportlab 5.1 splits a word wider than its column
# (splitLongWords=1 by default) and hyphenates when hyphenationLang, uriWasteReduce or
# embeddedHyphenation are set (rl_settings, overridable in a local reportlab_settings.py).
# Columns are sized so that the longest word fits instead (:func:`_column_widths`).
_NO_SPLIT = {"splitLongWords": 0, "hyphenationLang": "", "uriWasteReduce": 0, "embeddedHyphenation": 0}
# A heading is kept on the page of what follows it (see _KeepWithNext).
_HEADING = {**_NO_SPLIT, "keepWithNext": 1}

STYLES = {
    "title": ParagraphStyle("title", fontName=FONT_BOLD, fontSize=20, leading=24, textColor=ACCENT, spaceAfter=4, **_NO_SPLIT),
    "subtitle": ParagraphStyle("subtitle", fontName=FONT, fontSize=11, leading=14, textColor=MUTED, spaceAfter=10, **_NO_SPLIT),
    "h1": ParagraphStyle("h1", fontName=FONT_BOLD, fontSize=14, leading=18, textColor=ACCENT, spaceBefore=12, spaceAfter=6, **_HEADING),
    "h2": ParagraphStyle("h2", fontName=FONT_BOLD, fontSize=11, leading=14, textColor=INK, spaceBefore=8, spaceAfter=4, **_HEADING),
    "body": ParagraphStyle("body", fontName=FONT, fontSize=9.5, leading=13, textColor=INK, spaceAfter=5, alignment=TA_LEFT, **_NO_SPLIT),
    "note": ParagraphStyle("note", fontName=FONT, fontSize=8, leading=10.5, textColor=MUTED, spaceAfter=4, **_NO_SPLIT),
    "mono_note": ParagraphStyle("mono_note", fontName=MONO, fontSize=7.5, leading=10, textColor=INK, spaceAfter=4, **_NO_SPLIT),
    "cell": ParagraphStyle("cell", fontName=FONT, fontSize=8, leading=10, textColor=INK, **_NO_SPLIT),
    "cell_bold": ParagraphStyle("cell_bold", fontName=FONT_BOLD, fontSize=8, leading=10, textColor=INK, **_NO_SPLIT),
    "head": ParagraphStyle("head", fontName=FONT_BOLD, fontSize=8, leading=10, textColor=colors.white, **_NO_SPLIT),
}
CELL_PADDING = 6  # reportlab's default left and right padding of a table cell
MIN_CELL_FONT = 5.5  # a table whose longest words do not fit at 8 pt is set smaller, down to this


def _parts(value: Any, font: str) -> list[tuple[str, str, Hash | None]]:
    """A value as (text, font, hash) runs: hashes in monospace, the rest in ``font``."""
    if isinstance(value, Hash):
        return [(value.short, MONO, value)]
    if isinstance(value, Rich):
        return [run for part in value for run in _parts(part, font)]
    return [(text(value), font, None)]


def _markup(runs: list[tuple[str, str, Hash | None]]) -> str:
    out = []
    for chunk, font, digest in runs:
        escaped = escape(chunk).replace("\n", "<br/>")
        out.append(f'<font face="{font}">{escaped}</font>' if digest is not None else escaped)
    return "".join(out)


def _para(value: Any, style: str | ParagraphStyle = "body", *, label: str = "") -> Paragraph:
    style = STYLES[style] if isinstance(style, str) else style
    runs = _parts(value, style.fontName)
    flow = Paragraph(_markup(runs), style)
    # Collected by render_pdf for the "Hashes in full" appendix.
    flow._pl_hashes = [
        digest if digest.label or not label else Hash(digest.value, label) for _t, _f, digest in runs if digest and not digest.full
    ]
    return flow


def paragraph(value: Any, *, style: str = "body") -> Paragraph:
    """Plain text (escaped; newlines kept) as a paragraph."""
    return _para(value, style)


def note(value: Any) -> Paragraph:
    return _para(value, "note")


def heading(value: str, *, level: int = 1) -> Flowable:
    """A section heading; it never sits alone at the foot of a page (keepWithNext, _KeepWithNext)."""
    return _para(value, "h1" if level == 1 else "h2")


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


def _run_widths(runs: list[tuple[str, str, Hash | None]], size: float) -> tuple[float, float]:
    """The widest unbreakable word and the widest line of a cell's runs at ``size`` points."""
    longest = word = line = widest = 0.0
    for chunk, font, _digest in runs:
        for char in chunk:
            if char == "\n":
                longest, widest = max(longest, word), max(widest, line)
                word = line = 0.0
                continue
            width = pdfmetrics.stringWidth(char, font, size)
            line += width
            if char.isspace():
                longest, word = max(longest, word), 0.0
            else:
                word += width
    return max(longest, word), max(widest, line)


def _column_widths(columns: list[list[list[tuple[str, str, Hash | None]]]], *, width: float, size: float) -> tuple[list[float], float] | None:
    """Column widths for cells (runs per cell, per column) at ``size`` points, or None when the
    longest words do not fit side by side.

    Each column gets at least its longest word; the rest of the width goes to the columns
    whose text would wrap, in proportion to what they lack of their natural (one-line) width,
    and once every column has that, in proportion to the natural widths.
    """
    pad = 2 * CELL_PADDING
    minimum, natural = [], []
    for cells in columns:
        measured = [_run_widths(runs, size) for runs in cells] or [(0.0, 0.0)]
        minimum.append(max(m for m, _n in measured) + pad + 0.5)  # 0.5: rounding in reportlab's line fit
        natural.append(max(n for _m, n in measured) + pad + 0.5)
    if sum(minimum) > width:
        return None
    if sum(natural) <= width:
        spare = width - sum(natural)
        return [n + spare * n / sum(natural) for n in natural], size
    need = [n - m for m, n in zip(minimum, natural, strict=True)]
    spare = width - sum(minimum)
    return [m + spare * d / sum(need) for m, d in zip(minimum, need, strict=True)], size


def _cell_style(name: str, size: float) -> ParagraphStyle:
    base = STYLES[name]
    if size == base.fontSize:
        return base
    return ParagraphStyle(f"{name}-{size}", parent=base, fontSize=size, leading=size * base.leading / base.fontSize)


def _grid(rows: list[list[tuple[Any, str]]], *, width: float, labels: list[list[str]]) -> tuple[list[list[Paragraph]], list[float], float]:
    """Paragraphs for ``rows`` of (value, style name) with column widths from their content;
    the font shrinks (down to MIN_CELL_FONT) only when the longest words cannot fit at 8 pt."""
    n = max(len(r) for r in rows)
    size = STYLES["cell"].fontSize
    while True:
        columns = [[_parts(r[c][0], _cell_style(r[c][1], size).fontName) for r in rows if c < len(r)] for c in range(n)]
        fitted = _column_widths(columns, width=width, size=size)
        if fitted is not None or size <= MIN_CELL_FONT:
            break
        size -= 0.5
    if fitted is None:
        # Impossible even at the smallest size: widths in proportion to the longest words.
        pad = 2 * CELL_PADDING
        minimum = [max(_run_widths(runs, size)[0] for runs in cells) + pad for cells in columns]
        fitted = ([width * m / sum(minimum) for m in minimum], size)
    widths, size = fitted
    cells = [
        [_para(value, _cell_style(style, size), label=labels[i][c]) for c, (value, style) in enumerate(row)]
        for i, row in enumerate(rows)
    ]
    return cells, widths, size


def key_value_table(rows: Iterable[tuple[str, Any]], *, width: float = CONTENT_WIDTH) -> Table:
    """Facts as a two-column table: the key in bold on a tinted column, the value beside it."""
    rows = list(rows)
    cells, widths, _size = _grid(
        [[(key, "cell_bold"), (value, "cell")] for key, value in rows], width=width,
        labels=[[str(key), str(key)] for key, _v in rows],
    )
    # The keys take no more than their share: a long value wraps rather than a key.
    if len(widths) == 2 and widths[0] > width * 0.4:
        key_min = max(_run_widths(_parts(key, FONT_BOLD), _cell_style("cell_bold", _size).fontSize)[0] for key, _v in rows)
        value_min = max(_run_widths(_parts(v, FONT), _cell_style("cell", _size).fontSize)[0] for _k, v in rows)
        key_width = max(width * 0.4, key_min + 2 * CELL_PADDING + 0.5)
        if width - key_width >= value_min + 2 * CELL_PADDING + 0.5:
            widths = [key_width, width - key_width]
    table = Table(cells, colWidths=widths, hAlign="LEFT")
    table._pl_hashes = [h for row in cells for cell in row for h in cell._pl_hashes]
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


def data_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str = "None recorded.") -> Flowable:
    """A table with a coloured header row repeated on each page; ``empty`` when there are no rows.

    Column widths come from the content (:func:`_grid`): no word is ever split across lines.
    """
    if not rows:
        return note(empty)
    data = [[(h, "head") for h in header]] + [[(cell, "cell") for cell in row] for row in rows]
    # Where a hash is used: its column, and the row it is on when the row starts with a key.
    labels = [[str(h) for h in header]] + [
        [str(h) if c == 0 else f"{h}, {text(row[0])}" for c, h in enumerate(header)] for row in rows
    ]
    cells, widths, _size = _grid(data, width=CONTENT_WIDTH, labels=labels)
    table = Table(cells, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table._pl_hashes = [h for row in cells for cell in row for h in cell._pl_hashes]
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
    named = [(name, points) for name, points in series if points]
    # The legend gets rows of its own under the x axis: drawn inside the plot it would
    # cover the curves it names.
    legend_rows = len(named) if len(named) > 1 else 0
    legend_height = legend_rows * 9
    plot = LinePlot()
    plot.x, plot.y = 14 * mm, 12 * mm + legend_height
    plot.width, plot.height = width - 20 * mm, height - 24 * mm - legend_height
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
    points = [p for pts in data for p in pts]  # the dashed lines too: a cap must stay inside the axis
    for axis, values, fixed in ((plot.xValueAxis, [p[0] for p in points], x_range), (plot.yValueAxis, [p[1] for p in points], y_range)):
        if not fixed and values and all(float(v).is_integer() for v in values):
            low = int(min(values)) if axis is plot.xValueAxis else min(0, int(min(values)))
            _integer_ticks(axis, low, int(max(values)))
    drawing.add(plot)
    drawing.add(_label(width / 2, height - 10, title, size=9, bold=True))
    drawing.add(_label(plot.x + plot.width / 2, 1 + legend_height, x_label, size=7, colour=MUTED))
    y_axis_label = _label(0, 0, y_label, size=7, colour=MUTED)
    y_axis_label.x, y_axis_label.y = 4, plot.y + plot.height + 3
    y_axis_label.textAnchor = "start"
    drawing.add(y_axis_label)
    if legend_rows:
        legend = Legend()
        # One row per series from the left edge under the axis: swatch, then the name, so a
        # long model name runs into the free width, not past the page.
        legend.alignment = "right"
        legend.x, legend.y = 4, legend_height - 4
        legend.columnMaximum = legend_rows
        legend.deltay, legend.dx, legend.dy = 9, 8, 5
        legend.fontName, legend.fontSize = FONT, 7
        legend.colorNamePairs = [(SERIES_COLOURS[i % len(SERIES_COLOURS)], text(name)) for i, (name, _p) in enumerate(named)]
        drawing.add(legend)
    return drawing


def _integer_ticks(axis, low: int, high: int, *, most: int = 8) -> None:
    """Ticks at whole numbers only, for an axis of integer quantities (epochs, counts):
    reportlab's own choice would put one at 1.5 epochs."""
    if high <= low:
        high = low + 1
    step = 1
    for candidate in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000):
        step = candidate
        if (high - low) / candidate <= most:
            break
    else:
        step = math.ceil((high - low) / most)
    axis.valueMin, axis.valueMax = low, high
    axis.valueSteps = list(range(low, high + 1, step))
    axis.labelTextFormat = "%d"


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


class _KeepWithNext(KeepTogether):
    """Headings (keepWithNext) and the flowable after them, grouped by reportlab's document.

    All on one page when they fit. Otherwise the headings stay with the first part of what
    follows when that part fits below them (a long table splits under its heading), and go
    to the next page with it when it does not: a heading never ends a page.
    """

    def split(self, aW, aH):  # noqa: N803 (reportlab's API)
        if getattr(self, "_wrapInfo", None) != (aW, aH):
            self.wrap(aW, aH)
        content = self._content[:]
        if self._H <= aH:  # noqa: SIM300 (aH is reportlab's name, not a constant)
            return content
        *lead, last = content
        lead_height = sum(f.wrapOn(self.canv, aW, aH)[1] + f.getSpaceAfter() for f in lead)
        room = aH - lead_height - last.getSpaceBefore()
        parts = last.splitOn(self.canv, aW, room) if room > 0 else []
        if parts and not isinstance(parts[0], ActionFlowable) and parts[0].wrapOn(self.canv, aW, room)[1] <= room:
            return [*lead, *parts]
        frame = getattr(self, "_frame", None)
        if frame is not None and getattr(frame, "_atTop", False):
            return content  # already at the top of a page: nothing to gain from a break
        return [FrameBreak(), *content]


def _collect_hashes(flowables: Iterable[Any], found: dict[str, list[str]]) -> None:
    """Every hash shown in ``flowables`` (tables and containers included), in order of first
    use, with the labels of the places it is used."""
    for flow in flowables:
        if isinstance(flow, list | tuple):
            _collect_hashes(flow, found)
            continue
        for digest in getattr(flow, "_pl_hashes", None) or []:
            labels = found.setdefault(digest.value, [])
            if digest.label and digest.label not in labels:
                labels.append(digest.label)
        if not hasattr(flow, "_pl_hashes"):
            _collect_hashes(getattr(flow, "_content", None) or [], found)
            if isinstance(flow, Table):
                _collect_hashes(flow._cellvalues, found)


def hashes_appendix(flowables: Iterable[Flowable], *, extra: Sequence[Flowable] = ()) -> list[Flowable]:
    """The "Hashes in full" appendix: each hash the document shows shortened, in full, with
    where it is used; ``extra`` follows it (e.g. a signed checkpoint as one JSON line)."""
    found: dict[str, list[str]] = {}
    _collect_hashes(list(flowables), found)
    if not found and not extra:
        return []
    flows: list[Flowable] = [page_break(), heading("Hashes in full")]
    if found:
        flows.append(note(
            f"The body shows each hash by its first {HASH_SHOWN} hexadecimal digits; here they are in full, "
            "to compare with the records or recompute."
        ))
        flows.append(data_table(
            ["Shown as", "Where used", "Full value"],
            [[Hash(value), "; ".join(labels) or "—", Hash(value, full=True)] for value, labels in found.items()],
        ))
    flows.extend(extra)
    return flows


def render_pdf(
    path: Path | str, flowables: list[Flowable], *, title: str, subject: str = "", author: str = "Privacy Ledger",
    generated_at: datetime | None = None, appendix: Sequence[Flowable] = (),
) -> str:
    """Write ``flowables`` to ``path`` as a PDF with the house page template; return its SHA-256.

    Hashes shown shortened (:func:`hash_cell`) are listed in full in a closing appendix,
    followed by ``appendix``. The file is written beside its final name and moved into
    place, so a reader never sees a half-written report.
    """
    flowables = [*flowables, *hashes_appendix(flowables, extra=appendix)]
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
    doc.keepTogetherClass = _KeepWithNext

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
