"""The DPO and an automated decision, in Chromium (issue 19): from the sidebar to a decision's
page, its explanation read as words and rounded figures (feature names, raises or lowers,
no JSON), the input kept for review, the person's contest; the review decided in the
browser and its outcome recorded on the review, on the decision and in the audit chain; and
the decision log charted on the model version's page.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from decisions.models import Decision, DecisionReview, ReviewStatus
from governance.models import AuditEvent
from tests.browser import world as browser_world
from tests.browser.pages import long_numbers, raw_json

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Chart.js has drawn a chart on the canvas: unfold's script made an instance with data.
CHART_DRAWN = """(canvas) => {
    const chart = window.Chart && window.Chart.getChart(canvas);
    if (!chart) return {drawn: false};
    return {drawn: canvas.width > 0 && canvas.height > 0, series: chart.data.datasets.map((d) => d.label),
            total: chart.data.datasets.reduce((sum, d) => sum + d.data.reduce((a, b) => a + (b || 0), 0), 0)};
}"""


def _path(page) -> str:
    return urlsplit(page.url).path


def _readable(page, what: str) -> str:
    text = page.inner_text("body")
    assert not raw_json(text), f"{what} shows raw JSON: {raw_json(text)[:3]}"
    assert not long_numbers(text), f"{what} prints numbers with more than 4 significant digits: {long_numbers(text)[:5]}"
    return text


def _panel(page, title: str):
    return page.locator("section.pl-panel").filter(has=page.locator("h2", has_text=title)).first


def test_a_dpo_reads_an_explained_decision_and_decides_its_review(dpo_page, dpo, live_server, celery_worker,
                                                                  problems):
    page = dpo_page
    world = browser_world.build(dpo=dpo, full=False)
    decision = world.decisions[0]
    review = world.contested
    version = world.model_version

    # The sidebar's Decisions group leads to the decision log's list.
    page.goto(f"{live_server.url}/admin/")
    sidebar = page.locator("#nav-sidebar-inner")
    assert "Decision reviews" in sidebar.inner_text() and "Input retention" in sidebar.inner_text()
    sidebar.locator('a[href="/admin/decisions/decision/"]').first.click()
    page.wait_for_load_state()
    assert _path(page) == "/admin/decisions/decision/", page.url
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == browser_world.DECISIONS, page.inner_text("#result_list")
    _readable(page, "the decision list")
    rows.filter(has_text=f"Decision {decision.pk}:").first.get_by_role(
        "link", name=re.compile(rf"^Decision {decision.pk}\b")).click()
    page.wait_for_load_state()
    assert _path(page) == f"/admin/decisions/decision/{decision.pk}/change/", page.url

    # The decision's page: what was decided, under which policy, by which version; the
    # explanation as a table of the dataset's own feature names, each raising or lowering it.
    text = _readable(page, "the decision page")
    policy = page.locator("body").get_by_text(re.compile("confidence band|Label only|probabilit", re.I)).first
    assert policy.is_visible(), text[:2000]
    assert "label_with_band" not in text and "label_only" not in text and "full_probabilities" not in text, text[:2000]
    explanation = _panel(page, "Explanation")
    cells = [[c.strip() for c in row.locator("td").all_inner_texts()]
             for row in explanation.locator("tbody tr").all()]
    stored = decision.explanation["top_features"]
    assert [c[0] for c in cells] == [t["feature"] for t in stored], cells
    assert all(re.fullmatch(r"x\d", c[0]) for c in cells), cells
    assert {c[1] for c in cells} <= {"raises", "lowers"} and cells, cells
    for (_, direction, shown), recorded in zip(cells, stored, strict=True):
        # In percentage points of the decided outcome's probability, rounded for a person,
        # signed as its direction says.
        points = re.fullmatch(r"([+-]?\d+(?:\.\d+)?) points", shown)
        assert points, shown
        assert abs(float(points[1]) - 100 * recorded["contribution"]) <= 0.01 + abs(recorded["contribution"]), (
            shown, recorded)
        if float(points[1]):
            assert (float(points[1]) > 0) == (direction == "raises"), (shown, direction)
    assert "Integrated Gradients" in explanation.inner_text(), explanation.inner_text()
    # The input kept for review (the activity keeps inputs 40 days), rounded like the rest.
    kept = _panel(page, "Input kept for review").inner_text()
    assert "x0" in kept and "Art. 22(3)" in kept, kept
    # The decision links to its model version and to the review the person asked for.
    assert page.get_by_role("link", name=str(version)).count() >= 1, text[:2000]
    page.get_by_role("link", name=f"Review {review.pk}").first.click()
    page.wait_for_load_state()
    assert _path(page) == f"/admin/decisions/decisionreview/{review.pk}/change/", page.url

    # The review: the person's reason, how it came, the deadline; the form the DPO decides it with.
    text = _readable(page, "the open review")
    assert "readings were taken during an infection" in text and "Letter" in text, text[:2000]
    assert "Awaiting a reviewer" in text, text[:2000]
    assert page.get_by_role("link", name=f"Decision {decision.pk}").count() >= 1
    assert page.get_by_role("link", name=str(version)).count() >= 1
    new_label = next(str(c) for c in version.training_run.encoding["classes"] if str(c) != decision.outcome)
    # Saved without reasons: refused on the form, nothing recorded.
    page.select_option("select[name=outcome]", value="changed")
    page.fill("input[name=new_label]", new_label)
    page.locator("[name=_save]").first.click()
    page.wait_for_load_state()
    assert DecisionReview.objects.get(pk=review.pk).status == ReviewStatus.OPEN
    assert "This field is required" in page.inner_text("body"), page.inner_text("body")[:2000]
    # A label that is not one of the model's classes: refused by the service, said on the page.
    page.select_option("select[name=outcome]", value="changed")
    page.fill("input[name=new_label]", "no-such-class")
    page.fill("textarea[name=reasons]", "The readings were repeated after the infection and are normal.")
    page.locator("[name=_save]").first.click()
    page.wait_for_load_state()
    assert "Not decided: new_output.label" in page.inner_text("body"), page.inner_text("body")[:2000]
    assert _path(page) == f"/admin/decisions/decisionreview/{review.pk}/change/", page.url
    assert DecisionReview.objects.get(pk=review.pk).status == ReviewStatus.OPEN
    page.select_option("select[name=outcome]", value="changed")
    page.fill("input[name=new_label]", new_label)
    page.fill("textarea[name=reasons]", "The readings were repeated after the infection and are normal.")
    page.locator("[name=_save]").first.click()
    page.wait_for_load_state()

    # Recorded: the review is decided by this DPO, with the new label, in the audit chain.
    decided = DecisionReview.objects.get(pk=review.pk)
    assert (decided.status, decided.outcome, decided.reviewer_id) == (ReviewStatus.DECIDED, "changed", dpo.pk)
    assert str(decided.new_output["label"]) == new_label and decided.decided_at is not None
    assert AuditEvent.objects.filter(action="decision_review.decided", object_id=str(review.pk)).count() == 1
    # The review's page now reads as a record: the outcome in words, no form left.
    page.goto(f"{live_server.url}/admin/decisions/decisionreview/{review.pk}/change/")
    text = _readable(page, "the decided review")
    assert "Changed: a new decision replaces it" in text and "repeated after the infection" in text, text[:2000]
    assert re.search(rf"\b{re.escape(new_label)}\b", text)
    assert page.locator("[name=_save]").count() == 0 and page.locator("select[name=outcome]").count() == 0
    # The decision's page shows the review decided.
    page.goto(f"{live_server.url}/admin/decisions/decision/{decision.pk}/change/")
    inline = page.locator(".inline-group, fieldset").filter(has_text=f"Review {review.pk}").first.inner_text()
    assert "Changed" in inline and "Decided" in inline, inline
    # The list of reviews has nothing open left.
    page.goto(f"{live_server.url}/admin/decisions/decisionreview/?status__exact=open")
    assert page.locator("#result_list tbody tr").count() == 0

    # The model version's page charts its decision log: one series per outcome, every decision counted.
    page.goto(f"{live_server.url}/admin/mlops/modelversion/{version.pk}/change/")
    _readable(page, "the model version page")
    panel = _panel(page, "Decisions (Art. 22)")
    assert f"{browser_world.DECISIONS} decisions in the last 30 days" in panel.inner_text(), panel.inner_text()
    canvas = panel.locator("canvas.chart")
    canvas.wait_for()
    drawn = canvas.evaluate(CHART_DRAWN)
    outcomes = set(Decision.objects.filter(model_version=version).values_list("outcome", flat=True))
    assert drawn["drawn"] and drawn["total"] == browser_world.DECISIONS, drawn
    assert set(drawn["series"]) == {f"Outcome {o}" for o in outcomes}, drawn
    panel.get_by_role("link", name="All decisions of this version").click()
    page.wait_for_load_state()
    assert page.locator("#result_list tbody tr").count() == browser_world.DECISIONS

    assert not problems.all(), "\n".join(problems.all())
