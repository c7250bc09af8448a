"""Settings for Privacy Ledger, read from the environment.

Local defaults keep the quickstart server-free (SQLite under var/, Celery tasks run
in-process). With DEBUG off the service refuses to start unless the secrets are given,
because a default key would make every pseudonym reversible by anyone who read the code.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.strip().lower() in {"1", "true", "yes", "on"}:
        return True
    if value.strip().lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def env_rate(name: str, default: str) -> str:
    """A DRF throttle rate, 'N/period' (period s, m, h or d, spelt out or not): checked here, as
    DRF would only fail on it at the first request."""
    import re

    value = (os.environ.get(name) or default).strip()
    if not re.fullmatch(r"[1-9]\d*/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name} must be a rate like 1200/min (per s, min, hour or day), got {value!r}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

# Development-only keys: never used when DEBUG is off.
_DEV_SECRET_KEY = "dev-insecure-secret-key-do-not-use-in-production-0123456789abcdef"
_DEV_PSEUDONYMISATION_KEY = "dev-insecure-pseudonymisation-key-do-not-use-in-production"


def _required_secret(name: str, dev_default: str) -> str:
    value = os.environ.get(name, "")
    if value:
        return value
    if DEBUG:
        return dev_default
    raise ImproperlyConfigured(
        f"{name} environment variable is required when DEBUG is off "
        f"(set DEBUG=1 for local development, or provide {name})."
    )


SECRET_KEY = _required_secret("SECRET_KEY", _DEV_SECRET_KEY)
PSEUDONYMISATION_KEY = _required_secret("PSEUDONYMISATION_KEY", _DEV_PSEUDONYMISATION_KEY)
if not DEBUG and PSEUDONYMISATION_KEY == SECRET_KEY:
    raise ImproperlyConfigured(
        "PSEUDONYMISATION_KEY must differ from SECRET_KEY: the pseudonymisation key is "
        "additional information to be kept separately (GDPR Art. 4(5))."
    )
# Key of the train / validation / hold-out assignment of a person (mlops.data.subject_split).
# Empty: derived at use as HMAC-SHA256(PSEUDONYMISATION_KEY, "privacy-ledger/person-split/v1").
# Changing either key re-draws everyone's split, so keep it as stable as the pseudonyms.
PERSON_SPLIT_KEY = os.environ.get("PERSON_SPLIT_KEY", "")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS environment variable is required when DEBUG is off.")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

STORAGE_ROOT = Path(os.environ.get("STORAGE_ROOT") or BASE_DIR / "var")
ARTIFACT_ROOT = STORAGE_ROOT / "artifacts"
REPORT_ROOT = STORAGE_ROOT / "reports"

INSTALLED_APPS = [
    # The DPO's workspace (dashboard at /admin/): first, so its admin/index.html is found before
    # unfold's (the app template loader searches the apps in this order).
    "workspace",
    # Before django.contrib.admin: its templates and static files take precedence.
    "unfold",
    "unfold.contrib.filters",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "csp",
    "axes",
    "governance",
    "provenance",
    "mlops",
    "rights",
    "assessments",
    "decisions",
    # Notifies subscribers of model status changes (top layer: nothing imports it).
    "webhooks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Permissions-Policy everywhere, Cache-Control: no-store on the API and on downloads.
    "config.middleware.ResponseHeadersMiddleware",
    # /healthz answers before the Host header is validated: the container's health check
    # calls 127.0.0.1, which is not (and should not be) in ALLOWED_HOSTS.
    "config.middleware.HealthzMiddleware",
    # Bodies and query strings over the limits answer JSON on /api/ before any view reads them.
    "config.middleware.ApiRequestLimitsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "csp.middleware.CSPMiddleware",
    "config.middleware.AdminCspMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes requires: turns a locked-out admin login into its lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{STORAGE_ROOT / 'privacy_ledger.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
except Exception as exc:  # dj_database_url raises several types for malformed URLs
    raise ImproperlyConfigured(f"DATABASE_URL is malformed: {exc}") from exc
if os.environ.get("DATABASE_PASSWORD"):
    # Given apart from the URL, as it is: a password pasted into DATABASE_URL needs URL escaping
    # ('@', ':', '/', '%' ...), which a deployer writing it into docker/.env should not have to do.
    DATABASES["default"]["PASSWORD"] = os.environ["DATABASE_PASSWORD"]
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite is for the embedded quickstart and unit tests: wait for locks instead of failing.
    sqlite_options = DATABASES["default"].setdefault("OPTIONS", {})
    sqlite_options["timeout"] = 30
    # `make run` writes from the web process and a worker process at once. WAL lets readers
    # go on while one writes; IMMEDIATE takes the write lock when a transaction begins, so a
    # transaction that reads and then writes waits for the lock (the timeout above) instead
    # of failing at once with "database is locked" when it would upgrade.
    sqlite_options.setdefault("init_command", "PRAGMA journal_mode=WAL;")
    sqlite_options.setdefault("transaction_mode", "IMMEDIATE")
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    if DATABASES["default"]["NAME"] not in ("", ":memory:"):
        # A fresh clone has no var/ yet: SQLite creates the file, not its folder.
        Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # No JIT: the statements here are short, and one whose estimate is off (a table not yet
    # analysed after a bulk load) otherwise spends a quarter of a second compiling itself.
    pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    pg_options["options"] = f"{pg_options.get('options', '')} -c jit=off".strip()
    # A connection whose peer vanished without a reset (a network partition, a dropped NAT
    # entry) must fail, not block a worker for ever while its heartbeat thread, on a fresh
    # connection, keeps the lease alive: connecting is bounded, idle connections are probed,
    # and unacknowledged data times out.
    pg_options.setdefault("connect_timeout", env_int("DB_CONNECT_TIMEOUT_SECONDS", 10))
    pg_options.setdefault("keepalives", 1)
    pg_options.setdefault("keepalives_idle", 30)
    pg_options.setdefault("keepalives_interval", 10)
    pg_options.setdefault("keepalives_count", 3)
    pg_options.setdefault("tcp_user_timeout", env_int("DB_TCP_USER_TIMEOUT_MS", 60_000))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The image collects its static files into the image (STATIC_ROOT=/app/static), not into the
# data volume, so an upgraded image never serves the previous release's files.
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or STORAGE_ROOT / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- The DPO's workspace (django-unfold admin) -----------------------------------
# The dashboard at /admin/ is workspace.dashboard; the sidebar groups the pages by what a DPO
# does (workspace.navigation), and lists only the pages the user may see.
from django.templatetags.static import static  # noqa: E402 - used lazily by UNFOLD["STYLES"]

UNFOLD = {
    "SITE_TITLE": "Privacy Ledger",
    "SITE_HEADER": "Privacy Ledger",
    "SITE_SUBHEADER": "DPO workspace",
    "SITE_SYMBOL": "shield_person",
    "SITE_URL": "/",
    "DASHBOARD_CALLBACK": "workspace.dashboard.dashboard_callback",
    # The workspace's few styles (tables, links, badges), on every admin page.
    "STYLES": [lambda request: static("governance/workspace.css")],
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": True,
        "navigation": "workspace.navigation.sidebar_navigation",
    },
}

# --- E-mail (the daily deadline digest to DPOs) ---------------------------------------
# Development prints e-mails on the console; production sends by SMTP unless told otherwise.
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or (
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend"
)
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL are exclusive: set one of them (STARTTLS or TLS).")
# A mail server that does not answer must fail the send (recorded, retried), not hold the worker.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Privacy Ledger <privacy-ledger@localhost>")
# The address people reach the service at (https://ledger.example.org): links in e-mails.
# Empty: links are paths on the site.
SITE_BASE_URL = os.environ.get("SITE_BASE_URL", "http://127.0.0.1:8000" if DEBUG else "")

# --- Security (production) ---------------------------------------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEBUG and not SECURE_HSTS_PRELOAD:
    # Preloading is a commitment to the browser vendors that a deployer makes knowingly.
    SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Proxies in front of the service that append the client's address to X-Forwarded-For. 0: the
# peer's address (REMOTE_ADDR) is the client's, and X-Forwarded-For, which anyone can send, is
# ignored. Throttles and the admin lockout count per this address (governance.authentication).
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0)

# A cache shared by every web worker: throttle counters live in it, so with several gunicorn
# workers (or hosts) CACHE_URL must name a Redis database (compose uses redis://redis:6379/1).
# Not the broker's database: clearing the cache would empty the task queue.
CACHE_URL = os.environ.get("CACHE_URL", "")
if CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}}
elif CACHE_URL:
    raise ImproperlyConfigured(f"CACHE_URL must be a redis:// URL (or empty for a per-process cache), got {CACHE_URL!r}")
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Admin login lockout (django-axes): AXES_FAILURE_LIMIT wrong passwords for one username from
# one address lock that pair out for AXES_COOLOFF_MINUTES. A DPO unlocks at once with
# `manage.py axes_reset_username NAME` (or axes_reset_ip ADDRESS, or the admin's Access attempts).
AUTHENTICATION_BACKENDS = [
    "governance.authentication.LoginLockoutBackend",  # django-axes' AxesStandaloneBackend
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 30))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "governance.authentication.client_address"
AXES_VERBOSE = False

# Content-Security-Policy (django-csp 4): nothing inline, nothing from elsewhere. The Swagger UI
# is the split view (its script is a file), so the only inline code left is two fixed <style>
# blocks, allowed by their hashes alone: Swagger UI's, and the admin change list's (shown only
# by a ModelAdmin without action bars). Hashed from the installed templates, so an upgrade of
# either package keeps them right; tests/test_http_hardening.py checks the pages.


def _inline_style_hashes() -> list[str]:
    import base64
    import hashlib
    import importlib.util
    import re

    found = []
    for package, template in (
        ("drf_spectacular", "templates/drf_spectacular/swagger_ui.html"),
        ("django.contrib.admin", "templates/admin/change_list.html"),
    ):
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin).parent / template
        for block in re.findall(r"<style>(.*?)</style>", path.read_text(), flags=re.S):
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            found.append(f"'sha256-{digest}'")
    return found


CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", *_inline_style_hashes()],
        # Swagger UI draws its icons as data: SVGs.
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}
# Browser features no page here uses (middleware: config.middleware.ResponseHeadersMiddleware).
PERMISSIONS_POLICY = (
    "accelerometer=(), autoplay=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), "
    "magnetometer=(), microphone=(), midi=(), payment=(), usb=(), xr-spatial-tracking=()"
)

# --- REST API ----------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "governance.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["governance.permissions.RolePermission"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    # A JSON API (CSV record uploads add their own parser): the schema then promises exactly
    # the bodies the endpoints take, and a form post is a clear 415.
    "DEFAULT_PARSER_CLASSES": ["governance.api.parsers.StorableJSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_PAGINATION_CLASS": "governance.api.pagination.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "governance.api.exceptions.exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    # Per API key (or session user); failed authentications are counted per client address
    # by governance.authentication itself, since DRF authenticates before it throttles.
    "DEFAULT_THROTTLE_CLASSES": ["governance.authentication.ApiKeyRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "api_key": env_rate("API_THROTTLE_RATE", "1200/min"),
        "auth_failure": env_rate("API_AUTH_FAILURE_RATE", "20/min"),
    },
    "NUM_PROXIES": TRUSTED_PROXY_COUNT,
}
# Request limits. A body larger than this answers 413 (JSON on /api/). Django's limits on the
# number of fields and files apply as usual and answer JSON 400 on /api/.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 200 * 1024 * 1024)
# A query string longer than this answers 414 (JSON on /api/). Gunicorn's own request-line
# limit (docker/entrypoint.sh: 8190 bytes, its maximum) is above it, so Django answers first.
API_MAX_QUERY_STRING_LENGTH = env_int("API_MAX_QUERY_STRING_LENGTH", 4096)
# JSON bodies nested deeper than this (arrays and objects) are refused with a 400 before they
# are decoded (governance.api.parsers). No endpoint takes more than a few levels.
API_MAX_JSON_DEPTH = env_int("API_MAX_JSON_DEPTH", 64)

SPECTACULAR_SETTINGS = {
    "TITLE": "Privacy Ledger API",
    "DESCRIPTION": (
        "GDPR compliance and data provenance for machine learning. Authenticate with "
        "`Authorization: Token <key>` (or `Bearer <key>`); create keys with "
        "`manage.py create_api_key --user NAME --role ROLE`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "governance.api.schema.add_error_responses",
    ],
}

# --- Celery ------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
# `make run`'s broker: kombu's filesystem transport, a folder under STORAGE_ROOT that the web
# process writes and a real worker process reads, so the quickstart behaves like production
# (202 at once, the work in the background) with no server to install. Chosen over kombu's
# SQLAlchemy transport on SQLite: no extra dependency, and no second writer on a SQLite file.
# It has no redelivery of a killed worker's task; the outbox sweeper (beat, in the worker)
# re-sends such work once its lease lapses, as it does for a lost Redis queue.
CELERY_LOCAL_BROKER = CELERY_BROKER_URL.startswith("filesystem://")
if CELERY_LOCAL_BROKER:
    _BROKER_FOLDER = STORAGE_ROOT / "broker"
    for _sub in ("queue", "control", "results"):
        (_BROKER_FOLDER / _sub).mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = (
    os.environ.get("CELERY_RESULT_BACKEND", "")
    or (f"file://{_BROKER_FOLDER / 'results'}" if CELERY_LOCAL_BROKER else CELERY_BROKER_URL)
    or None
)
# Embedded mode: no broker configured, so tasks run in-process (make demo, make test).
CELERY_EMBEDDED = not CELERY_BROKER_URL
CELERY_TASK_ALWAYS_EAGER = CELERY_EMBEDDED
CELERY_TASK_EAGER_PROPAGATES = CELERY_EMBEDDED
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 3600)
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 3900)
CELERY_TASK_TRACK_STARTED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis redelivers an unacknowledged task after this; it must exceed the hard time limit,
# or a long task would be handed to a second worker while the first still runs it.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
if CELERY_LOCAL_BROKER:
    CELERY_BROKER_TRANSPORT_OPTIONS.update(
        data_folder_in=str(_BROKER_FOLDER / "queue"),
        data_folder_out=str(_BROKER_FOLDER / "queue"),
        control_folder=str(_BROKER_FOLDER / "control"),
    )
CELERY_RESULT_EXPIRES = timedelta(days=7)
# A broker that is down must cost an API request about a second, not the 20 s of Celery's
# default retries (the result backend's subscribe and the publish each retry): the work is
# recorded anyway and the redispatch sweeper sends it when the broker is back.
_QUICK_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_TASK_PUBLISH_RETRY_POLICY = _QUICK_RETRY
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"retry_policy": _QUICK_RETRY}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 2
CELERY_BEAT_SCHEDULE: dict = {}
# Leases on background work (governance.leases): a worker refreshes its heartbeat every
# lease/6 s; work whose heartbeat is older than the lease is taken over. This, not the
# broker's visibility timeout, is what recovers work from a worker that died.
TASK_LEASE_SECONDS = env_int("TASK_LEASE_SECONDS", 60)
# The outbox sweeper (governance.dispatch): how often it runs, how long recorded work may
# stay unsent (a publish that failed), and how long sent work may wait unstarted before it
# is sent again (a broker restarted without persistence loses its queue; a duplicate of
# work that was merely waiting is refused by the task).
REDISPATCH_SWEEP_SECONDS = env_int("REDISPATCH_SWEEP_SECONDS", 60)
REDISPATCH_UNSENT_AFTER_SECONDS = env_int("REDISPATCH_UNSENT_AFTER_SECONDS", 30)
REDISPATCH_UNSTARTED_AFTER_SECONDS = env_int("REDISPATCH_UNSTARTED_AFTER_SECONDS", 1800)
CELERY_BEAT_SCHEDULE["redispatch-stalled-work"] = {
    "task": "governance.redispatch_stalled_work",
    "schedule": timedelta(seconds=REDISPATCH_SWEEP_SECONDS),
}

# --- Logging -----------------------------------------------------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Privacy Ledger ----------------------------------------------------------------
# `manage.py demo`: one step per app, bottom layer first.
DEMO_STEPS = (
    "governance.demo", "provenance.demo", "mlops.demo", "rights.demo", "assessments.demo", "decisions.demo",
    "rights.demo_requests",
)
API_KEY_DEFAULT_LIFETIME_DAYS = env_int("API_KEY_DEFAULT_LIFETIME_DAYS", 365)

# --- governance (foundation) ---
CELERY_BEAT_SCHEDULE.update(
    {
        "verify-audit-chain": {
            "task": "governance.verify_audit_chain",
            "schedule": timedelta(hours=env_int("AUDIT_VERIFY_INTERVAL_HOURS", 24)),
        }
    }
)
# Signed checkpoints of the audit chain (governance/checkpoints.py): the head is signed with an
# Ed25519 key the database never holds and appended to a file outside it, so cutting events off
# the end of the chain is found. The key: PEM or base64 of the 32-byte seed, in the variable or
# a file (`manage.py audit_signing_key_generate` makes one). Required when DEBUG is off (a
# deploy-check error); in development a key file is generated under STORAGE_ROOT.
AUDIT_SIGNING_KEY = os.environ.get("AUDIT_SIGNING_KEY", "")
AUDIT_SIGNING_KEY_FILE = os.environ.get("AUDIT_SIGNING_KEY_FILE", "")
AUDIT_SIGNING_KEY_DEVELOPMENT = DEBUG and not (AUDIT_SIGNING_KEY or AUDIT_SIGNING_KEY_FILE)
if AUDIT_SIGNING_KEY_DEVELOPMENT:
    AUDIT_SIGNING_KEY_FILE = str(STORAGE_ROOT / "dev-audit-signing-key.pem")  # made on first use, with a warning
# Public keys of earlier signing keys (after a rotation), so their checkpoints still verify.
AUDIT_PUBLIC_KEYS_FILE = os.environ.get("AUDIT_PUBLIC_KEYS_FILE", "")
# Append-only location: mount it from storage the database host cannot rewrite.
AUDIT_CHECKPOINT_DIR = Path(os.environ.get("AUDIT_CHECKPOINT_DIR") or STORAGE_ROOT / "audit-checkpoints")
AUDIT_CHECKPOINT_EVERY_EVENTS = env_int("AUDIT_CHECKPOINT_EVERY_EVENTS", 1000)
# audit_verify reports a missing checkpoint past EVERY_EVENTS + this many unanchored events.
AUDIT_CHECKPOINT_SLACK_EVENTS = env_int("AUDIT_CHECKPOINT_SLACK_EVENTS", AUDIT_CHECKPOINT_EVERY_EVENTS)
CELERY_BEAT_SCHEDULE["audit-checkpoint"] = {
    "task": "governance.audit_checkpoint",
    "schedule": timedelta(minutes=env_int("AUDIT_CHECKPOINT_EVERY_MINUTES", 60)),
}

# --- erasure ---
# A key separate from the pseudonymisation key, so an erasure receipt (kept after the
# subject row is gone) recognises a repeated request without ever matching a pseudonym.
_erasure_salt = os.environ.get("ERASURE_RECEIPT_SALT", "")
if not _erasure_salt:
    import hashlib as _hashlib
    import hmac as _hmac

    _erasure_salt = _hmac.new(
        PSEUDONYMISATION_KEY.encode(), b"privacy-ledger/erasure-receipt-salt/v1", _hashlib.sha256
    ).hexdigest()
ERASURE_RECEIPT_SALT = _erasure_salt
# Public holidays moving a deadline to the next working day (Reg. 1182/71 Art. 3(4)):
# ISO dates, comma separated, and/or a file with one ISO date per line ('#' comments).
ERASURE_PUBLIC_HOLIDAYS = env_list("ERASURE_PUBLIC_HOLIDAYS", [])
ERASURE_PUBLIC_HOLIDAYS_FILE = os.environ.get("ERASURE_PUBLIC_HOLIDAYS_FILE", "")
ERASURE_BACKUP_STATEMENT = os.environ.get(
    "ERASURE_BACKUP_STATEMENT",
    "The data were erased from live systems. Backups containing them are encrypted, put beyond use "
    "(never restored into live systems without re-applying this erasure) and overwritten within 35 days.",
)
ERASURE_CERTIFICATE_ROOT = REPORT_ROOT / "erasure"
CELERY_BEAT_SCHEDULE.update(
    {
        # Consent withdrawals open their erasure requests after the commit; this catches up
        # on any whose receiver did not run.
        "open-erasure-requests-for-withdrawals": {
            "task": "rights.open_erasure_requests_for_withdrawals",
            "schedule": timedelta(minutes=env_int("ERASURE_WITHDRAWAL_SWEEP_MINUTES", 15)),
        }
    }
)

# The deadline digest (rights.digest): each day at this hour (of TIME_ZONE), every DPO with
# an e-mail address gets the requests overdue or due within 7 days; at most once a day.
DEADLINE_DIGEST_HOUR = env_int("DEADLINE_DIGEST_HOUR", 7)
if not 0 <= DEADLINE_DIGEST_HOUR <= 23:
    raise ImproperlyConfigured(f"DEADLINE_DIGEST_HOUR must be an hour 0-23, got {DEADLINE_DIGEST_HOUR}")
# Beat reads crontab hours in this zone, the one the digest's "today" is in.
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE["erasure-deadline-digest"] = {
    "task": "rights.send_deadline_digest",
    "schedule": crontab(hour=DEADLINE_DIGEST_HOUR, minute=0),
}

# Access (Art. 15) and portability (Art. 20) answers built by a task are downloadable for
# this many days after completion, then answer 410 and the daily purge deletes their files:
# a copy of a person's data must not outlive the answer's purpose.
RIGHTS_ANSWER_DOWNLOAD_DAYS = env_int("RIGHTS_ANSWER_DOWNLOAD_DAYS", 30)
if RIGHTS_ANSWER_DOWNLOAD_DAYS < 1:
    raise ImproperlyConfigured(f"RIGHTS_ANSWER_DOWNLOAD_DAYS must be 1 or more, got {RIGHTS_ANSWER_DOWNLOAD_DAYS}")
CELERY_BEAT_SCHEDULE["rights-purge-expired-answers"] = {
    "task": "rights.purge_expired_answers",
    "schedule": crontab(hour=3, minute=30),
}

# --- provenance ---
PROVENANCE_MAX_ROWS_PER_REQUEST = env_int("PROVENANCE_MAX_ROWS_PER_REQUEST", 100_000)
# Snapshots and report jobs both have a "kind": one named enum each, no hashed names.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {"SnapshotKindEnum": "provenance.models.SnapshotKind", "ReportKindEnum": "governance.models.ReportKind"}
)
# OpenLineage: HTTP (Marquez, DataHub…) when OPENLINEAGE_URL is set, else JSON lines in a file.
OPENLINEAGE_URL = os.environ.get("OPENLINEAGE_URL", "")
OPENLINEAGE_ENDPOINT = os.environ.get("OPENLINEAGE_ENDPOINT", "api/v1/lineage")
OPENLINEAGE_API_KEY = os.environ.get("OPENLINEAGE_API_KEY", "")
OPENLINEAGE_FILE = Path(os.environ.get("OPENLINEAGE_FILE") or STORAGE_ROOT / "openlineage" / "events.jsonl")
OPENLINEAGE_NAMESPACE = os.environ.get("OPENLINEAGE_NAMESPACE", "privacy-ledger")
OPENLINEAGE_PRODUCER = os.environ.get("OPENLINEAGE_PRODUCER", "https://github.com/privacy-ledger/privacy-ledger")
CELERY_BEAT_SCHEDULE.update(
    {
        "provenance-retention-purge": {
            "task": "provenance.retention_purge",
            "schedule": timedelta(hours=env_int("PROVENANCE_RETENTION_PURGE_INTERVAL_HOURS", 24)),
        },
        # Recomputes every snapshot from its records (provenance/integrity.py); failures
        # become audit events.
        "provenance-verify-snapshots": {
            "task": "provenance.verify_snapshots",
            "schedule": timedelta(hours=env_int("SNAPSHOT_VERIFY_INTERVAL_HOURS", 24)),
        },
    }
)

# --- mlops ---
MLOPS_SWEEP_INTERVAL_SECONDS = env_int("MLOPS_SWEEP_INTERVAL_SECONDS", 300)
# Members and non-members used by one membership-inference audit (each side, sampled).
MLOPS_MIA_MAX_EXAMPLES = env_int("MLOPS_MIA_MAX_EXAMPLES", 5000)
# LiRA (mlops.services.audit_lira): reference models per audit, each one training of the
# version's configuration on half the audit's pool (0 turns LiRA off unless a policy needs it).
MLOPS_LIRA_REFERENCES = env_int("MLOPS_LIRA_REFERENCES", 8)
# Canaries of the one-run ε audit (mlops.services.audit_canary), at most one per training
# record; the audit run costs one training (0 turns it off unless a policy needs it).
MLOPS_CANARY_COUNT = env_int("MLOPS_CANARY_COUNT", 1000)
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {"ModelStatusEnum": "mlops.models.ModelStatus", "AuditJobStatusEnum": "mlops.models.AuditJobStatus",
     "RectificationActionEnum": "mlops.models.RectificationAction", "RunStatusEnum": "mlops.models.RunStatus"}
)
# Redis redelivers a task whose worker died only after the visibility timeout; lowering
# it (e.g. in the killed-worker test) makes redelivery quick, but it must stay above the
# longest task in production or a live task would be run twice.
if os.environ.get("CELERY_VISIBILITY_TIMEOUT"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        **CELERY_BROKER_TRANSPORT_OPTIONS,
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", CELERY_TASK_TIME_LIMIT + 600),
    }
# A training run still 'running' this long after its last start is failed by the sweeper.
# It must exceed the visibility timeout: a run whose worker host died is first redelivered
# by Redis (a clean retry); the sweeper only catches what no retry rescued.
# A run whose worker died this many times (its lease lapsed, e.g. killed for memory each
# time) is failed instead of being taken over again.
MLOPS_MAX_ATTEMPTS = env_int("MLOPS_MAX_ATTEMPTS", 5)
# An external run (trained outside the ledger) not reported this many hours after it reserved
# its budget is failed by the same sweep and its reservation released, so an abandoned run
# does not hold the dataset's budget for ever.
EXTERNAL_RUN_REPORT_HOURS = env_int("EXTERNAL_RUN_REPORT_HOURS", 72)
MLOPS_TRAINING_TIME_LIMIT = env_int(
    "MLOPS_TRAINING_TIME_LIMIT", CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"] + 900
)
CELERY_BEAT_SCHEDULE.update(
    {
        "mlops-fail-stuck-training-runs": {
            "task": "mlops.fail_stuck_training_runs",
            "schedule": timedelta(seconds=MLOPS_SWEEP_INTERVAL_SECONDS),
        }
    }
)

# --- decisions (served models, Art. 22) ---
# The keyed hash of a decision's input row (decisions.services.predictions.input_hash): it
# recognises the same input presented again without storing it. Empty: derived at use as
# HMAC-SHA256(PSEUDONYMISATION_KEY, "privacy-ledger/decision-input/v1"); keep it as stable.
DECISION_INPUT_HASH_KEY = os.environ.get("DECISION_INPUT_HASH_KEY", "")
# Rows one prediction request may carry, and how many of them may be explained (attributions
# and a counterfactual cost about a millisecond or two per row each); a request of up to
# DECISION_EXPLAIN_DEFAULT_ROWS rows is explained unless it says "explain": false.
DECISION_MAX_ROWS = env_int("DECISION_MAX_ROWS", 10_000)
DECISION_EXPLAIN_MAX_ROWS = env_int("DECISION_EXPLAIN_MAX_ROWS", 1_000)
DECISION_EXPLAIN_DEFAULT_ROWS = env_int("DECISION_EXPLAIN_DEFAULT_ROWS", 100)
# Model versions kept loaded per process (an LRU keyed by the weights' SHA-256).
DECISION_MODEL_CACHE_SIZE = env_int("DECISION_MODEL_CACHE_SIZE", 8)
# The decision log is kept this many days, then purged (AI Act Art. 26(6): at least six
# months; refused below 183 by the system check decisions.E001).
DECISION_LOG_RETENTION_DAYS = env_int("DECISION_LOG_RETENTION_DAYS", 183)
CELERY_BEAT_SCHEDULE["decisions-purge"] = {
    "task": "decisions.purge",
    "schedule": crontab(hour=3, minute=45),
}
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {"ReviewOutcomeEnum": "decisions.models.ReviewOutcome", "ReviewChannelEnum": "decisions.models.ReviewChannel",
     "ReviewStatusEnum": "decisions.models.ReviewStatus",
     # Output policies (mlops) have a kind, as snapshots and report jobs do.
     "OutputPolicyKindEnum": "mlops.models.OutputPolicyKind",
     # Erasure requests have a channel too: each set gets its own name.
     "ErasureChannelEnum": "rights.models.ErasureChannel"}
)

# --- reports (DPIA, records of processing, PDF reports) ---
# WP248 "large scale": the number of data subjects from which a DPIA screening proposes it.
DPIA_LARGE_SCALE_SUBJECTS = env_int("DPIA_LARGE_SCALE_SUBJECTS", 10000)
# Inherent and residual risk share one scale each: one enum name per scale in the OpenAPI schema.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {
        "LikelihoodEnum": "assessments.models.Likelihood",
        "SeverityEnum": "assessments.models.Severity",
        "RiskLevelEnum": "assessments.models.RiskLevel",
    }
)

# --- governance ---
# Name the "action" enums explicitly: the consent ledger and erasure remediation both have one,
# and the OpenAPI schema must not fall back to hashed names.
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {
        "ConsentActionEnum": "governance.models.ConsentAction",
        "RemediationActionEnum": "rights.models.RemediationAction",
        # Erasure and the other rights share their statuses; each refuses on its own grounds.
        "RequestStatusEnum": "rights.models.ErasureStatus",
        "ErasureRefusalGroundEnum": "rights.models.RefusalGround",
        "RightsRefusalGroundEnum": "rights.models.RightsRefusalGround",
    }
)

# --- webhooks (model status notifications, docs/webhooks.md) ---
# Subscription secrets are stored Fernet-encrypted under a key derived (HKDF) from this
# value, or from SECRET_KEY when it is empty. Changing it makes stored secrets unreadable
# (their deliveries fail): subscribers register again.
WEBHOOK_SECRET_KEY = os.environ.get("WEBHOOK_SECRET_KEY", "")
# Plain http is refused when DEBUG is off unless this is set; addresses that are loopback,
# private, link-local or multicast are refused unless WEBHOOK_ALLOW_PRIVATE (tests, an
# internal receiver you trust). Checked at registration and at every delivery.
WEBHOOK_ALLOW_HTTP = env_bool("WEBHOOK_ALLOW_HTTP", False)
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8)
# The n-th retry waits BASE × 2^(n-1) seconds, at most MAX: 30 s, 1 min, 2 min, ... 1 h.
WEBHOOK_RETRY_BASE_SECONDS = env_int("WEBHOOK_RETRY_BASE_SECONDS", 30)
WEBHOOK_RETRY_MAX_SECONDS = env_int("WEBHOOK_RETRY_MAX_SECONDS", 3600)
WEBHOOK_MAX_ACTIVE_PER_USER = env_int("WEBHOOK_MAX_ACTIVE_PER_USER", 100)
WEBHOOK_SWEEP_SECONDS = env_int("WEBHOOK_SWEEP_SECONDS", 60)
WEBHOOK_SWEEP_BATCH = env_int("WEBHOOK_SWEEP_BATCH", 1000)
CELERY_BEAT_SCHEDULE["webhooks-deliveries-sweep"] = {
    "task": "webhooks.deliveries_sweep",
    "schedule": timedelta(seconds=WEBHOOK_SWEEP_SECONDS),
}
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {"WebhookDeliveryStatusEnum": "webhooks.models.DeliveryStatus"}
)
