"""The Celery application.

Tasks take ids, not objects, and call a service; they are enqueued with
``delay_on_commit`` so a worker never sees a row that was rolled back. Without a broker
(embedded mode) ``task_always_eager`` runs them in-process, still after the commit.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("privacy_ledger")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Report jobs keep their task beside their machinery in governance/reports/.
app.autodiscover_tasks(lambda: ["governance.reports"])
