"""A decision's output in words, for the admin pages and the demo's summary."""

from __future__ import annotations

from governance import display

# What a confidence band means (mlops.engine.explain.CONFIDENCE_BANDS), for the person reading it.
BAND_TEXT = {"high": "high (90% or more)", "medium": "medium (70% to 90%)", "low": "low (under 70%)"}


def output_text(output: dict | None) -> str:
    """A decision's output as it was shown, in words: ``1; probabilities 0: 41%, 1: 59%``,
    ``1; confidence medium (70% to 90%)``, or the label alone."""
    if not isinstance(output, dict) or "label" not in output:
        return display.DASH
    parts = [str(output["label"])]
    if output.get("confidence_band"):
        parts.append(f"confidence {BAND_TEXT.get(output['confidence_band'], output['confidence_band'])}")
    probabilities = output.get("probabilities")
    if isinstance(probabilities, dict):
        parts.append("probabilities " + ", ".join(f"{label}: {display.percent(p)}" for label, p in probabilities.items()))
    if output.get("note"):
        parts.append(str(output["note"]))
    return "; ".join(parts)
