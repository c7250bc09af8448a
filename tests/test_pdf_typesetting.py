"""Typesetting of every PDF the demo writes, read back from the files' text positions.

The demo is run once for the module (about 20 s on SQLite with the test settings' cheap
audits): it is the one thing that writes every kind of report (DPIA, record of processing,
model lineage, erasure certificate, notice of refusal) from realistic records. While it
runs, every paragraph's source text is recorded, so the checks compare what the PDF shows
with the text the report was built from:

- no word (or hash) is split across two lines: two consecutive lines whose last and first
  fragments join into (part of) one source word, while they are not both whole words;
- no heading is the last line of a page;
- hashes are shortened, set in monospace, and given in full in the "Hashes in full" appendix;
- the ε-per-epoch chart has integer ticks on its epoch axis;
- the texts agree with the records they describe (the DPIA's data-minimisation sentence,
  the lineage report's erasure remediation decisions).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest
from pypdf import PdfReader
from reportlab.pdfbase import pdfmetrics

from governance.reports import toolkit as tk

pytestmark = [pytest.mark.slow]

# The page template's running header and footer (toolkit._NumberedCanvas) sit outside the
# margins; the body lies between these heights (points from the bottom of an A4 page).
BODY_BOTTOM, BODY_TOP = 45.0, 795.0
HEADING_MIN_SIZE = 11.0  # h2 is 11 pt, h1 14 pt, the title 20 pt; table text is 8 pt
# A hash or Merkle root: 20 or more hex digits with letters among them (a timestamp in a
# demo name is digits only).
HEX_RUN = re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{20,}\b")
SHORT_HASH = re.compile(r"\b([0-9a-f]{12})…")
NUMBER = re.compile(r"[-+]?[\d.,]+%?")


@dataclass(frozen=True)
class Fragment:
    page: int
    x: float
    y: float
    text: str
    font: str
    size: float

    @property
    def bold(self) -> bool:
        return "Bold" in self.font

    @property
    def mono(self) -> bool:
        return "Mono" in self.font or "Courier" in self.font

    @property
    def right(self) -> float:
        """Where the fragment's text ends, measured with the font the toolkit registered."""
        face = self.font.split("+")[-1].lstrip("/")
        font = {"DejaVuSans": tk.FONT, "DejaVuSans-Bold": tk.FONT_BOLD, "DejaVuSansMono": tk.MONO}.get(face, face)
        return self.x + pdfmetrics.stringWidth(self.text, font, self.size)


def _fragments(path: Path) -> list[list[Fragment]]:
    """Per page, the text fragments in drawing order with their position, font and size."""
    pages = []
    for number, page in enumerate(PdfReader(path).pages, 1):
        found: list[Fragment] = []

        def visit(text, cm, tm, font_dict, font_size, number=number, found=found):
            if not text.strip():
                return
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
            font = str((font_dict or {}).get("/BaseFont", ""))
            found.append(Fragment(number, round(x, 1), round(y, 1), text.strip("\n"), font, float(font_size or 0)))

        page.extract_text(visitor_text=visit)
        pages.append(found)
    return pages


def _source_words(texts: list[str]) -> set[str]:
    words: set[str] = set()
    for raw in texts:
        plain = unescape(re.sub(r"<[^>]+>", " ", raw))
        words.update(plain.split())
    return words


# The demo as `make demo` runs it, in a process of its own on its own SQLite file and storage
# folder: it commits (on-commit signals drive it), which no test transaction could undo, and
# the suite's database (PostgreSQL on CI) stays untouched. Every paragraph's source text is
# recorded by wrapping reportlab's Paragraph in that process.
DEMO_DRIVER = """
import io, json, sys
import django
django.setup()
from django.core.management import call_command
from reportlab.platypus import paragraph as rl_paragraph
sources = []
original_init = rl_paragraph.Paragraph.__init__
def recording_init(self, text, *args, **kwargs):
    sources.append(str(text))
    original_init(self, text, *args, **kwargs)
rl_paragraph.Paragraph.__init__ = recording_init
call_command("migrate", verbosity=0)
call_command("demo", stdout=io.StringIO())
with open(sys.argv[1], "w") as out:
    json.dump(sources, out)
"""
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_reports(tmp_path_factory):
    """Run the demo once; the PDFs it wrote (by kind), their fragments and the source texts."""
    storage = tmp_path_factory.mktemp("pdf-demo")
    env = {key: value for key, value in os.environ.items() if key not in {
        "DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CACHE_URL", "DJANGO_SETTINGS_MODULE"}}
    env |= {"DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1", "STORAGE_ROOT": str(storage),
            # The audits' extra trainings change no layout; the test settings leave them out too.
            "MLOPS_LIRA_REFERENCES": "0", "MLOPS_CANARY_COUNT": "0"}
    sources_file = storage / "sources.json"
    result = subprocess.run([sys.executable, "-c", DEMO_DRIVER, str(sources_file)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sources = json.loads(sources_file.read_text())
    report_root = storage / "reports"
    pdfs = sorted(report_root.rglob("*.pdf"))
    kinds: dict[str, list[Path]] = {}
    for pdf in pdfs:
        kind = re.sub(r"(-\d+)?(-job\d+)?$", "", pdf.stem)  # dpia-1-job1, ropa-job2, erasure-certificate-1
        kinds.setdefault(kind, []).append(pdf)
    return {
        "kinds": kinds,
        "pages": {pdf: _fragments(pdf) for pdf in pdfs},
        "words": _source_words(sources),
    }


def test_the_demo_writes_every_report_kind(demo_reports):
    assert {"dpia", "ropa", "model-lineage", "erasure-certificate", "erasure-refusal-notice"} <= set(demo_reports["kinds"])


def _splits(pages: list[list[Fragment]], words: set[str]) -> list[str]:
    """Line breaks inside a source word: consecutive fragments on different lines whose
    joined ends are part of one source word, while they are not both whole source words."""
    haystack = "\x00".join(sorted(words))
    found = []
    for page in pages:
        for first, second in zip(page, page[1:], strict=False):
            if abs(first.y - second.y) < 1 or first.text.endswith(" ") or second.text.startswith(" "):
                continue  # the same line, or a space between them anyway
            tail, head = first.text.split()[-1], second.text.split()[0]
            if NUMBER.fullmatch(tail) and NUMBER.fullmatch(head):
                continue  # two numbers, e.g. a chart's tick labels: drawn one by one, never wrapped
            joined = tail + head
            if tail.endswith("-") and tail not in words and (tail[:-1] + head) in haystack:
                found.append(f"p{first.page}: {tail!r} | {head!r} (hyphenated)")
            elif joined in haystack and not (tail in words and head in words):
                found.append(f"p{first.page}: {tail!r} | {head!r}")
    return found


def test_no_word_or_hash_is_split_across_lines(demo_reports):
    problems = {
        pdf.name: splits for pdf, pages in demo_reports["pages"].items() if (splits := _splits(pages, demo_reports["words"]))
    }
    assert not problems, problems


def test_no_text_runs_into_the_next_column_or_past_the_margin(demo_reports):
    """Words are never split, so a column narrower than its longest word would overflow."""
    right_margin = tk.PAGE_SIZE[0] - tk.MARGIN + 0.5
    problems = []
    for pdf, pages in demo_reports["pages"].items():
        for page in pages:
            body = [f for f in page if BODY_BOTTOM < f.y < BODY_TOP]
            for f in body:
                if f.right > right_margin:
                    problems.append(f"{pdf.name} p{f.page}: past the margin: {f.text!r}")
                for other in body:
                    if abs(other.y - f.y) < 1 and f.x < other.x < f.right - 0.5:
                        problems.append(f"{pdf.name} p{f.page}: {f.text!r} runs into {other.text!r}")
    assert not problems, problems


def test_no_heading_is_the_last_line_of_a_page(demo_reports):
    problems = []
    for pdf, pages in demo_reports["pages"].items():
        for page in pages[:-1]:  # the last page may end anywhere
            body = [f for f in page if BODY_BOTTOM < f.y < BODY_TOP]
            lowest = min(body, key=lambda f: f.y)
            if lowest.bold and lowest.size >= HEADING_MIN_SIZE:
                problems.append(f"{pdf.name} p{lowest.page}: {lowest.text!r}")
    assert not problems, problems


def _appendix_start(pages: list[list[Fragment]]) -> tuple[int, float] | None:
    for number, page in enumerate(pages):
        for f in page:
            if f.text == "Hashes in full" and f.bold:
                return number, f.y
    return None


def test_hashes_are_short_monospaced_and_given_in_full_in_an_appendix(demo_reports):
    problems = []
    for pdf, pages in demo_reports["pages"].items():
        start = _appendix_start(pages)
        body = [f for n, page in enumerate(pages) for f in page if start is None or (n, -f.y) < (start[0], -start[1])]
        appendix = [f for n, page in enumerate(pages) for f in page if start is not None and (n, -f.y) >= (start[0], -start[1])]
        shortened = set()
        for f in body:
            if HEX_RUN.search(f.text):
                problems.append(f"{pdf.name} p{f.page}: a long hex run in the body: {f.text!r}")
            for match in SHORT_HASH.finditer(f.text):
                shortened.add(match.group(1))
                if not f.mono:
                    problems.append(f"{pdf.name} p{f.page}: hash {match.group(0)} not in monospace ({f.font})")
        full = {m.group(0) for f in appendix for m in re.finditer(r"[0-9a-f]{40,}", f.text)}
        for short in sorted(shortened):
            if not any(value.startswith(short) for value in full):
                problems.append(f"{pdf.name}: {short}… has no full value in the appendix")
        if shortened and start is None:
            problems.append(f"{pdf.name}: shortened hashes but no 'Hashes in full' appendix")
    assert not problems, problems


def test_epoch_axes_have_integer_ticks(demo_reports):
    problems = []
    checked = 0
    for pdf, pages in demo_reports["pages"].items():
        for page in pages:
            for label in [f for f in page if f.text == "epoch" and f.size == 7]:
                # The chart's epoch-axis tick labels: 7 pt numbers on one line just above the
                # axis label "epoch", which is centred under the plot.
                ticks = [
                    f for f in page
                    if f.size == 7 and re.fullmatch(r"-?\d+(\.\d+)?", f.text)
                    and label.x - 100 <= f.x <= label.x + 110 and label.y < f.y <= label.y + 35
                ]
                rows: dict[float, list[Fragment]] = {}
                for f in ticks:
                    rows.setdefault(f.y, []).append(f)
                x_axis = max(rows.values(), key=len, default=[])
                checked += bool(x_axis)
                problems += [f"{pdf.name} p{f.page}: epoch tick {f.text}" for f in x_axis if not f.text.lstrip("-").isdigit()]
    assert checked, "no ε-per-epoch chart with tick labels found"
    assert not problems, problems


def _text(pdf: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(pdf).pages)


def test_the_dpia_minimisation_text_names_the_datasets_features(demo_reports):
    text = _text(demo_reports["kinds"]["dpia"][0])
    section = text.split("Necessity and proportionality (Art. 35(7)(b))", 1)[1].split("Data minimisation facts", 1)[0]
    assert "vital signs" not in section
    assert "x0" in section and "x9" in section and "high_risk" in section, section


def test_the_lineage_report_shows_the_erasure_remediation_of_a_superseded_version(demo_reports):
    text = _text(demo_reports["kinds"]["model-lineage"][0])
    assert "superseded" in text.lower()
    assert "No erasure remediation decision concerns this model version" not in text
    decisions = text.split("Erasure remediation decisions", 1)[1]
    assert re.search(r"#\d+", decisions) and "Retrain" in decisions, decisions[:400]


# --- The toolkit's rules on small inputs (no demo needed) ------------------------------


def _longest_word(value, font: str, size: float) -> float:
    return max(pdfmetrics.stringWidth(w, font, size) for w in tk.text(value).split())


def test_each_column_is_at_least_as_wide_as_its_longest_word():
    name = "clinical-risk-features-20261201221805871572"
    table = tk.data_table(["Snapshot", "Dataset", "Rows removed", "Note"], [[1, name, 4, "a fairly long free text " * 6]])
    widths = table._colWidths
    assert abs(sum(widths) - tk.CONTENT_WIDTH) < 0.5
    size = table._cellvalues[1][0].style.fontSize
    for column, value in enumerate(["Snapshot", name, "removed", "fairly"]):
        font = tk.FONT_BOLD if column == 0 else tk.FONT
        assert widths[column] >= _longest_word(value, font, size) + 2 * tk.CELL_PADDING


def test_a_table_whose_words_cannot_fit_is_set_smaller():
    # Five 22-character words: about 560 pt side by side at 8 pt, 400 pt at 5.5 pt.
    words = [f"unbreakable-word-no-{i}-" for i in range(5)]
    table = tk.data_table([f"Column {i}" for i in range(5)], [words])
    size = table._cellvalues[1][0].style.fontSize
    assert tk.MIN_CELL_FONT <= size < 8
    for column, word in enumerate(words):
        assert table._colWidths[column] >= _longest_word(word, tk.FONT, size) + 2 * tk.CELL_PADDING - 0.01


def test_hashes_are_shortened_and_collected_for_the_appendix():
    digest = "ab" * 32
    table = tk.data_table(["Snapshot", "Merkle root"], [[3, tk.hash_cell(digest)]])
    assert tk.text(tk.hash_cell(digest)) == digest[:12] + "…"
    appendix = tk.hashes_appendix([tk.paragraph("Report"), table])
    assert [f.text for f in appendix if hasattr(f, "text")][0] == "Hashes in full"
    full_table = appendix[-1]
    assert digest in full_table._cellvalues[1][2].text
    assert "Merkle root, 3" in full_table._cellvalues[1][1].text  # where used: column and row key


def test_integer_series_get_integer_ticks():
    chart = tk.line_chart([("m", [(1.0, 0.4), (2.0, 0.9), (3.0, 1.3)])], title="t", x_label="epoch", y_label="ε")
    plot = next(c for c in chart.contents if hasattr(c, "xValueAxis"))
    assert plot.xValueAxis.valueSteps == [1, 2, 3]
    assert getattr(plot.yValueAxis, "valueSteps", None) is None  # ε is not an integer quantity
