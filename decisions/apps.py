from django.apps import AppConfig


class DecisionsConfig(AppConfig):
    name = "decisions"
    verbose_name = "Automated decisions (GDPR Art. 22)"

    def ready(self) -> None:
        # Audit-event details record codes; the workspace shows their labels.
        from decisions import checks  # noqa: F401  (registers the retention system check)
        from decisions.receivers import forget_erased_subject
        from governance.signals import subject_erasing

        subject_erasing.connect(forget_erased_subject, dispatch_uid="decisions.forget_erased_subject")

        from decisions.selectors import decisions_about_subject
        from governance.subject_data import subject_data_provider_register

        # The person's access answer (rights) lists the decisions made about them.
        subject_data_provider_register("decisions_about_you", decisions_about_subject)
        from decisions.models import ReviewChannel, ReviewOutcome
        from governance.display import detail_labels_register

        detail_labels_register("review_outcome", ReviewOutcome)
        detail_labels_register("review_channel", ReviewChannel)
