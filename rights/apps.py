from django.apps import AppConfig


class RightsConfig(AppConfig):
    name = "rights"
    verbose_name = "Rights of data subjects (GDPR Chapter III)"

    def ready(self) -> None:
        # Audit-event details record codes; the workspace shows their labels.
        from governance.display import detail_labels_register
        from rights.models import ErasureChannel, ErasureGround, ErasureRegime, ErasureStatus, RefusalGround

        for key, choices in (("ground", ErasureGround), ("refusal_ground", RefusalGround), ("regime", ErasureRegime),
                             ("channel", ErasureChannel), ("status", ErasureStatus)):
            detail_labels_register(key, choices)

        # Reactions to the lower layers' named signals, and this app's report kind.
        from governance.models import ReportKind
        from governance.reports.jobs import report_kind_register
        from rights import receivers  # noqa: F401
        from rights.reports import erasure_certificate_precheck, erasure_certificate_report_render

        report_kind_register(
            kind=ReportKind.ERASURE_CERTIFICATE, build=erasure_certificate_report_render,
            about=("rights", "ErasureRequest"), precheck=erasure_certificate_precheck,
        )

        from governance.dispatch import redispatch_register
        from rights.services import erasure_requests_redispatch

        redispatch_register("erasure requests", erasure_requests_redispatch)
        from rights.services.answers import rights_requests_redispatch

        redispatch_register("rights request answers", rights_requests_redispatch)
