"""The demo's decisions step: about 20 decisions with explanations on the active model, one
contest decided by the DPO, and the decision log written as CSV."""

from __future__ import annotations

import io

import pytest
from django.core.management.base import OutputWrapper

from decisions import demo
from decisions.models import Decision, DecisionReview
from governance import services
from governance.demo_context import DemoContext
from tests.decisions.helpers import trained_version

pytestmark = pytest.mark.django_db


def test_the_demo_step_decides_explains_and_reviews_one_contest(tmp_path):
    version = trained_version(health_condition=True)
    ctx = DemoContext(seed=7, out=OutputWrapper(io.StringIO()), report_dir=tmp_path)
    ctx.shared.update(model_version=version, user_dpo=services.user_ensure_with_role(username="demo-dpo", role="dpo"),
                      subject_identifiers=[f"person-{i}@demo.example" for i in range(12)])
    demo.run(ctx)
    assert Decision.objects.filter(model_version=version).count() == demo.N_DECISIONS
    assert Decision.objects.filter(model_version=version, subject_pseudonym="").count() == demo.N_DECISIONS - 12
    review = DecisionReview.objects.get()
    assert review.status == "decided" and review.outcome == "upheld" and review.reviewer.username == "demo-dpo"
    facts = {label: value for _, label, value in ctx.facts}
    assert facts["decisions"].startswith(f"{demo.N_DECISIONS} by {version}")
    assert "Top label with a confidence band" in facts["output policy"]
    assert "an explanation" in facts
    (label, path), = ctx.artifacts
    assert path.read_text().count("\n") == demo.N_DECISIONS + 1


def test_without_an_active_model_the_step_says_so(tmp_path):
    out = io.StringIO()
    ctx = DemoContext(seed=7, out=OutputWrapper(out), report_dir=tmp_path, verbosity=2)
    demo.run(ctx)
    assert "nothing to decide" in out.getvalue()
    assert not Decision.objects.exists()
