import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from governance import services


class Command(BaseCommand):
    help = "Local development only: make sure an 'admin' superuser exists and say how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--url", default="http://127.0.0.1:8000/", help="where the server will listen")
        parser.add_argument("--worker-log", default="", help="the worker's log file, to print")

    def handle(self, *args, url: str, worker_log: str, **options):
        if not settings.DEBUG:
            raise CommandError("ensure_local_admin is for local development (DEBUG=1) only; use createsuperuser.")
        User = get_user_model()
        password_file = settings.STORAGE_ROOT / "local-admin-password.txt"
        user = User.objects.filter(username="admin").first()
        if user is None or not password_file.exists():
            password = secrets.token_urlsafe(12)
            user = user or User(username="admin", email="admin@localhost", is_staff=True, is_superuser=True)
            user.set_password(password)
            user.save()
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password + "\n")
            os.chmod(password_file, 0o600)
        services.user_ensure_with_role(username="admin", role="dpo", actor="ensure_local_admin")
        password = password_file.read_text().strip()
        base = url.rstrip("/")
        if settings.CELERY_EMBEDDED:
            tasks = "in this process (no broker configured)"
        elif settings.CELERY_LOCAL_BROKER:
            tasks = f"in a worker process beside the server (log: {worker_log})" if worker_log else "in a worker process"
        else:
            tasks = "in Celery workers"
        self.stdout.write(
            f"\nPrivacy Ledger at {base}/  (tasks run {tasks}; Ctrl-C stops it)\n"
            f"  Admin:   {base}/admin/   user 'admin', password '{password}' (kept in {password_file})\n"
            f"  API:     {base}/api/v1/   docs at {base}/api/docs/ (after logging in to the admin)\n"
            "  API key: DEBUG=1 .venv/bin/python manage.py create_api_key --user pipeline --role ml_engineer\n"
        )
