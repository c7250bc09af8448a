"""Services that write MLOps records, one module per concept (as Zulip split its actions):

- ``queueing``: validate a training request, plan its privacy cost, reserve it, queue it;
- ``execution``: claim a queued run (its lease), train it outside any transaction, register
  its model, settle; cancel; the stuck-run sweeper;
- ``training``: what training a claimed run does (its data, single-model and SISA
  procedures, progress reports);
- ``budget``: the privacy-budget ledger (caps, reservations, settlement);
- ``registry``: the model registry: one version numbering per model name under one lock,
  taint, supersede, retire;
- ``remediation``: bringing a model lineage back to a version trained on none of the people
  removed (retrain, unlearn, keep on DP, retire), serialised per lineage and coalesced;
- ``rectification``: versions trained on record values a rectification (Art. 16) corrected:
  stale, and the processing activity's policy (retrain on a fresh snapshot, or accept);
- ``unlearning``: SISA unlearning of a lineage's head from its shards' checkpoints;
- ``audits``: loading a version's models, the loss-threshold membership-inference audit;
- ``audit_jobs``: which audits a version gets, running one under a lease, the audit policy
  a version must pass before it becomes active;
- ``audit_lira``, ``audit_canary``, ``audit_attribute``: one module per attack (LiRA with
  reference models, the canary ε lower bound, attribute inference against imputation);
- ``explanations``: output policies of models, the explanation-based membership attack
  (run in the loss attack's job) and the "logic involved" summary of a version;
- ``audit_unlearning``: checking that a version made to forget people does not remember
  them.

Keyword-only, atomic where a write must be all-or-nothing, audited; a call in the wrong
state is refused, so a redelivered task is harmless. Callers import from here.
"""

from mlops.services.audit_jobs import (
    AuditNotApplicable,
    audit_policy_set,
    audit_policy_verdict,
    model_version_audits_plan,
    privacy_audit_job_run,
    privacy_audit_jobs_redispatch,
)
from mlops.services.audit_unlearning import unlearning_check_record
from mlops.services.audits import membership_inference_audit_run, model_version_load
from mlops.services.budget import privacy_budget_set
from mlops.services.config import _schema_for, _train_config
from mlops.services.execution import (
    DATABASE_FAULTS,
    ProgressCallback,
    training_run_cancel,
    training_run_execute,
    training_run_fail_stuck,
)
from mlops.services.explanations import (
    explanation_attack_run,
    model_explanation_summary_compute,
    model_explanation_summary_queue,
    output_policy_set,
)
from mlops.services.queueing import training_run_queue, training_runs_redispatch
from mlops.services.rectification import (
    records_rectified_receive,
    rectification_policy_current,
    rectification_policy_set,
    stale_versions_retrain,
)
from mlops.services.registry import (
    LIVE_STATUSES,
    erasure_amendments_after,
    lineage_head,
    model_versions_taint_trained_before,
)
from mlops.services.remediation import ACTIONS as REMEDIATION_ACTIONS
from mlops.services.remediation import model_lineage_remediate
from mlops.services.unlearning import shard_config, shard_rows

__all__ = [
    "AuditNotApplicable",
    "audit_policy_set",
    "audit_policy_verdict",
    "model_version_audits_plan",
    "privacy_audit_job_run",
    "privacy_audit_jobs_redispatch",
    "unlearning_check_record",
    "DATABASE_FAULTS",
    "LIVE_STATUSES",
    "REMEDIATION_ACTIONS",
    "erasure_amendments_after",
    "lineage_head",
    "model_lineage_remediate",
    "model_versions_taint_trained_before",
    "rectification_policy_current",
    "rectification_policy_set",
    "records_rectified_receive",
    "stale_versions_retrain",
    "shard_config",
    "shard_rows",
    "ProgressCallback",
    "_schema_for",
    "_train_config",
    "membership_inference_audit_run",
    "explanation_attack_run",
    "model_explanation_summary_compute",
    "model_explanation_summary_queue",
    "output_policy_set",
    "model_version_load",
    "privacy_budget_set",
    "training_run_cancel",
    "training_run_execute",
    "training_run_fail_stuck",
    "training_run_queue",
    "training_runs_redispatch",
]
