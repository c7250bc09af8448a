"""Decisions: about 20 people decided by the demo's active model, with explanations, one
of them contested and reviewed by the DPO, and the decision log exported as CSV.

Uses the model, the people and the DPO of the earlier steps (``ctx.shared``); the rows are
new synthetic applicants drawn from the demo's seed, not the training records. Writes
var/reports/decisions/decision-log.csv.
"""

from __future__ import annotations

import time

import numpy as np

from decisions import selectors, services
from decisions.display import output_text
from decisions.models import Decision
from governance import display
from governance.demo_context import DemoContext
from mlops.models import OutputPolicyKind

N_DECISIONS = 20


def _served_version(ctx: DemoContext):
    """The demo's DP model if it is still active, else the newest active version of its
    lineage (an erasure or a rectification may have replaced it), else any active one."""
    from mlops.models import ModelStatus, ModelVersion

    shared = ctx.shared.get("model_version")
    active = ModelVersion.objects.filter(status=ModelStatus.ACTIVE).select_related("training_run__snapshot__dataset")
    if shared is not None:
        found = active.filter(name=shared.name).order_by("-version").first()
        if found is not None:
            return found
    return active.order_by("-created_at", "-id").first()


def _rows(version, rng: np.random.Generator, n: int) -> list[dict]:
    """Synthetic applicants in the dataset's schema: numbers around the demo's scale (within
    published bounds when given), categories drawn from their lists."""
    rows = []
    features = version.training_run.snapshot.dataset.schema["features"]
    for _ in range(n):
        values = {}
        for f in features:
            if f["type"] == "category":
                values[f["name"]] = str(rng.choice(f["categories"]))
            elif f["type"] == "bool":
                values[f["name"]] = bool(rng.random() < 0.5)
            else:
                x = float(rng.normal())
                if "min" in f:
                    x = float(f["min"] + (f["max"] - f["min"]) * rng.random())
                values[f["name"]] = int(round(x)) if f["type"] == "int" else round(x, 3)
        rows.append(values)
    return rows


def run(ctx: DemoContext) -> None:
    version = _served_version(ctx)
    dpo = ctx.shared.get("user_dpo")
    if version is None or dpo is None:
        ctx.say("no active model or no DPO from the earlier steps: nothing to decide")
        return
    engineer = ctx.shared.get("user_ml_engineer") or dpo
    rng = np.random.default_rng(ctx.seed + 19)
    rows = _rows(version, rng, N_DECISIONS)
    people = list(ctx.shared.get("subject_identifiers") or [])[:N_DECISIONS]
    subjects = people + [None] * (N_DECISIONS - len(people))

    started = time.perf_counter()
    answer = services.decisions_make(model_version=version, rows=rows, subjects=subjects, explain=True, actor=engineer)
    seconds = time.perf_counter() - started
    policy = answer["output_policy"]
    outcomes: dict[str, int] = {}
    for item in answer["decisions"]:
        outcomes[str(item["output"]["label"])] = outcomes.get(str(item["output"]["label"]), 0) + 1
    ctx.fact("decisions", f"{len(answer['decisions'])} by {version} in {seconds * 1000:.0f} ms with explanations; "
                          f"outcomes {', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))}")
    ctx.fact("output policy", f"{display.label(OutputPolicyKind, policy['kind'])} ({policy['source']})"
                              + (f"; attributions withheld: {policy['withheld_because']}"
                                 if policy["attributions_withheld"] else ""))
    first = answer["decisions"][0]
    explanation = first["explanation"] or {}
    if explanation.get("top_contributions"):
        top = ", ".join(f"{c['feature']} {c['direction']} ({c['contribution']:+.3f})"
                        for c in explanation["top_contributions"][:3])
        ctx.fact("an explanation", f"decision {first['decision']} ({output_text(first['output'])}): {top}; Integrated Gradients "
                                   f"convergence delta {explanation['convergence_delta']:.1e}")
        hint = explanation.get("counterfactual")
        ctx.say("counterfactual: " + (f"{hint['feature']} from {hint['from']} to {hint['to']} gives "
                                      f"{hint['new_label']}" if hint else "no single change flips it"))
    elif explanation.get("withheld"):
        ctx.fact("an explanation", f"withheld: {explanation['reason']}")

    decision = Decision.objects.get(pk=first["decision"])
    review = services.decision_contest(
        decision=decision, channel="letter", actor=dpo,
        reason="The person says their values were measured during an acute illness and asks for a human review.",
    )
    review = services.decision_review_decide(
        review=review, outcome="upheld", reviewer=dpo,
        reasons="Reviewed by the DPO with the clinician: the decision follows from the values given; it stands.",
    )
    ctx.fact("contest (Art. 22(3))", f"review {review.pk} of decision {decision.pk}: {review.get_outcome_display()}, "
                                     f"due {review.due_at:%Y-%m-%d}, decided by {review.reviewer}")

    path = ctx.report_dir / "decisions" / "decision-log.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for chunk in selectors.decision_log_csv(model_version_id=version.pk):
            fh.write(chunk)
    ctx.artifact("decision log (CSV)", path)
