from django.apps import AppConfig


class MlopsConfig(AppConfig):
    name = "mlops"
    verbose_name = "MLOps (DP training, models, privacy budget)"

    def ready(self) -> None:
        from governance.display import detail_labels_register
        from mlops.models import Accountant, AuditKind, MembershipAttack

        for key, choices in (("accountant", Accountant), ("kind", AuditKind), ("attack", MembershipAttack)):
            detail_labels_register(key, choices)

        # Provenance's lineage continues past the snapshot through this reader (it never
        # imports mlops); see provenance/downstream.py.
        from mlops.selectors import trained_on_snapshots
        from provenance.downstream import downstream_reader_register

        downstream_reader_register(trained_on_snapshots)

        from governance.dispatch import redispatch_register
        from mlops.services import privacy_audit_jobs_redispatch, training_runs_redispatch

        redispatch_register("training runs", training_runs_redispatch)
        redispatch_register("privacy audits", privacy_audit_jobs_redispatch)

        # Models trained on values a rectification corrected become stale (provenance's signal).
        from mlops import receivers  # noqa: F401
