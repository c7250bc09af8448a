"""The person's access answer (Art. 15(1)(h)) carries the logic involved of the models trained
on them and the decisions made about them (Art. 22), through governance.subject_data: rights
does not import decisions."""

from __future__ import annotations

import json

import pytest

from decisions.models import Decision
from decisions.services import decision_contest, decisions_make
from mlops.services.explanations import model_explanation_summary_compute
from provenance.models import SnapshotMembership
from rights.access import access_answer
from rights.reports import access_answer_pdf_write
from tests.decisions.helpers import row, trained_version
from tests.governance.reports_helpers import pdf_text
from tests.rights import helpers as h

pytestmark = pytest.mark.django_db


def test_the_answer_explains_the_logic_of_the_models_trained_on_the_person():
    version = trained_version()
    member = SnapshotMembership.objects.filter(snapshot=version.training_run.snapshot).select_related("subject")[0]
    before = access_answer(subject=member.subject)["article_15_1_h_automated_decision_making"]["items"]
    assert [m["logic_involved"] for m in before if m["version"] == version.version and m["model"] == version.name] == [None]

    model_explanation_summary_compute(model_version_id=version.pk)
    items = access_answer(subject=member.subject)["article_15_1_h_automated_decision_making"]["items"]
    (mine,) = [m for m in items if m["model"] == version.name]
    logic = mine["logic_involved"]
    assert {f["feature"] for f in logic["what_weighs_most"]} <= set(mine["features_used"])
    assert all(f["direction"] in ("raises", "lowers") and f["average_weight"] >= 0 for f in logic["what_weighs_most"])
    assert "Integrated Gradients" in logic["how_this_is_measured"] or "integrated" in logic["how_this_is_measured"]
    assert logic["what_a_prediction_shows"]


def test_the_answer_lists_the_persons_own_decisions_and_reviews_and_no_one_elses(tmp_path):
    version = trained_version(seed=5)
    person, other = "decided.access@clinic.example", "someone.else@clinic.example"
    subject = h.subject_for(person)
    answer = decisions_make(model_version=version, rows=[row(1), row(2), row(3)], subjects=[person, other, person],
                            explain=True)
    first = Decision.objects.get(pk=answer["decisions"][0]["decision"])
    decision_contest(decision=first, reason="The result does not match my situation.", actor=None)

    part = access_answer(subject=subject)["decisions_about_you"]
    assert part["article"] == "Art. 15(1)(h), Art. 22" and len(part["items"]) == 2
    assert [len(d["reviews"]) for d in part["items"]] == [1, 0]
    assert part["items"][0]["reviews"][0]["status"] == "Awaiting a reviewer"
    assert all(d["model"] == version.name and d["what_weighed_most"] for d in part["items"])
    text = json.dumps(part)
    assert other not in text and "0.1234567" not in text  # no one else, no input value

    path = tmp_path / "answer.pdf"
    access_answer_pdf_write(answer=access_answer(subject=subject), path=path)
    pdf = pdf_text(path.read_bytes())
    assert "Decisions made about you with these models" in pdf and "Awaiting a reviewer" in pdf
