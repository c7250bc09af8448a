from django.apps import AppConfig


class AssessmentsConfig(AppConfig):
    name = "assessments"
    verbose_name = "Assessments (DPIA, Art. 35)"

    def ready(self) -> None:
        # Evidence changes mark signed DPIAs for review (receivers of mlops's named signals).
        from assessments import signals  # noqa: F401
        from assessments.reports.dpia import dpia_report_render
        from assessments.reports.model_lineage import model_lineage_report_render
        from governance.models import ReportKind
        from governance.reports.jobs import report_kind_register

        report_kind_register(kind=ReportKind.DPIA, build=dpia_report_render, about=("assessments", "Dpia"))
        report_kind_register(
            kind=ReportKind.MODEL_LINEAGE, build=model_lineage_report_render, about=("mlops", "ModelVersion"),
            role_aware=True,
        )
