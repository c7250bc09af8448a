from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks (model status notifications)"

    def ready(self) -> None:
        # Subscribers hear of every status change mlops announces (after its commit); the
        # layers above mlops never are imported by it, so the connection is made from here.
        from mlops.signals import model_version_status_changed
        from webhooks.receivers import status_changed_receive

        model_version_status_changed.connect(status_changed_receive, dispatch_uid="webhooks.status_changed_receive")
