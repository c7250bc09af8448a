from django.apps import AppConfig


class GovernanceConfig(AppConfig):
    name = "governance"
    verbose_name = "Governance (GDPR records, consent, audit)"

    def ready(self) -> None:
        from governance import checks  # noqa: F401 (registers the system checks)
        from governance.display import detail_labels_register
        from governance.models import LawfulBasis, SpecialCategoryCondition

        detail_labels_register("lawful_basis", LawfulBasis)
        detail_labels_register("special_category_condition", SpecialCategoryCondition)
        from governance.models import ReportKind
        from governance.reports.jobs import report_kind_register
        from governance.reports.ropa import ropa_report_render

        report_kind_register(kind=ReportKind.ROPA, build=ropa_report_render, about=None)

        from governance.dispatch import redispatch_register
        from governance.reports.jobs import report_jobs_redispatch

        redispatch_register("report jobs", report_jobs_redispatch)
