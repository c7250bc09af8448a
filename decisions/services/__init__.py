"""Services that write decision records, one module per concept:

- ``predictions``: serving a model version: validate, encode, predict, present, explain,
  record the decisions (and, under a retention option, their inputs);
- ``reviews``: contesting a decision (Art. 22(3)) and the reviewer's outcome;
- ``retention``: the input-retention option per processing activity, the purge of expired
  inputs and of the decision log past its retention, and unlinking erased people.

Keyword-only, atomic, audited; a call in the wrong state is refused. Callers import from here.
"""

from decisions.services.predictions import decisions_make, input_hashes, model_version_servable
from decisions.services.retention import decision_input_retention_set, decisions_purge, decisions_subject_forget
from decisions.services.reviews import decision_contest, decision_review_decide, review_due_date

__all__ = [
    "decision_contest",
    "decision_input_retention_set",
    "decision_review_decide",
    "decisions_make",
    "decisions_purge",
    "decisions_subject_forget",
    "input_hashes",
    "model_version_servable",
    "review_due_date",
]
