from django.apps import AppConfig


class WorkspaceConfig(AppConfig):
    """The DPO's workspace: the dashboard at /admin/ and the sidebar's navigation. It stands
    above every other app and only reads from them."""

    name = "workspace"
    verbose_name = "DPO workspace"
