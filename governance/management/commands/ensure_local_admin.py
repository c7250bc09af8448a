import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from governance import services


class Command(BaseCommand):
    help = "Local development only: make sure an 'admin' superuser exists and say how to log in."

    def handle(self, *args, **options):
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
        self.stdout.write(
            "\nPrivacy Ledger at http://127.0.0.1:8000/\n"
            f"  Admin:   http://127.0.0.1:8000/admin/   user 'admin', password '{password}' (kept in {password_file})\n"
            "  API:     http://127.0.0.1:8000/api/v1/   docs at /api/docs/ (log in to the admin first)\n"
            "  API key: DEBUG=1 .venv/bin/python manage.py create_api_key --user pipeline --role ml_engineer\n"
        )
