"""Settings, read from the environment (README "Configuration", docs/protocol.md).

Values are parsed leniently here and judged by the system checks in chatproj/checks.py,
which `manage.py check` and every server start run: a wrong value refuses to start with
a message naming the variable, instead of failing later or in a traceback.
"""

import os
import secrets
import tempfile
import warnings
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

# (variable, problem) for every environment value that could not be parsed; see chatproj/checks.py.
ENV_PROBLEMS: list[tuple[str, str]] = []


def env_bool(name, default):
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def _env_number(name, default, kind):
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        ENV_PROBLEMS.append((name, f"must be {'an integer' if kind is int else 'a number'}, not {raw!r}"))
        return kind(default)


def env_float(name, default):
    return _env_number(name, default, float)


def env_int(name, default):
    return _env_number(name, default, int)


def env_list(name, default):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Off unless set: `make run` and the tests set DEBUG=1 themselves.
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
# Without DEBUG a missing key is refused at start (chatproj/checks.py); never a fixed one.
SECRET_KEY_MISSING = not SECRET_KEY and not DEBUG
if not SECRET_KEY:
    SECRET_KEY = "dev-only-insecure-key" if DEBUG else secrets.token_urlsafe(50)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# Behind a TLS proxy (README, "Production"): the header it sets, e.g. X-Forwarded-Proto.
_proxy_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _proxy_header:
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https")
USE_X_FORWARDED_HOST = env_bool("USE_X_FORWARDED_HOST", False)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # probes speak plain HTTP to the process
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", False)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "axes",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves /static/ from the app itself under daphne (from the source folders when DEBUG).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a lockout into its response.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First, so a locked-out sign-in is refused before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "chatproj.urls"
ASGI_APPLICATION = "chatproj.asgi.application"

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

# Under ASGI every request may run in its own thread: persistent connections
# would pile up, so connections are closed after each request (CONN_MAX_AGE=0).
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=0,
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Streams flush from worker threads while requests write: wait for the
    # lock instead of failing at once, and run in WAL mode (readers never block the writer).
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    # A file, not shared-cache memory: its locks honour the timeout above under concurrent
    # threads. One per test process, so test runs side by side do not share it.
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(tempfile.gettempdir(), f"stopchat-test-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    from chatproj.layers import redis_hosts

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chatproj.layers.ResilientRedisChannelLayer",
            "CONFIG": {
                "hosts": redis_hosts(REDIS_URL),
                # One namespace per deployment (and per test run), so several can share a Redis.
                "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "stopchat"),
                # A channel is one socket or one server process. Frames are coalesced
                # (at most 20 a second per stream), so 1000 queued messages means the
                # reader is gone or stuck: past that, sends fail instead of growing Redis.
                "capacity": 1000,
                # Undelivered messages of a vanished reader expire after this many seconds.
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
# After `collectstatic` (the Docker image runs it) files are served with hashed names and
# cached for good; without it, whitenoise serves them from the source folders, DEBUG or not.
COLLECTED = (STATIC_ROOT / "staticfiles.json").exists()
WHITENOISE_USE_FINDERS = not COLLECTED
if not COLLECTED:
    warnings.filterwarnings("ignore", message="No directory at", module="whitenoise.base")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if COLLECTED else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# No inline script or style anywhere (the page's data travels in a JSON <script> block,
# which is not run); model output is sanitized markdown and may load nothing.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# Password guessing (django-axes): after LOGIN_FAILURE_LIMIT wrong passwords for one user
# name from one address, sign-in is refused for LOGIN_COOLOFF_MINUTES.
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_float("LOGIN_COOLOFF_MINUTES", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "project-list"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    # Scripts send `Authorization: Token <key>` (manage.py issue_token); pages use the session.
    # (The session first: an anonymous request is then a 403, as on the SSE send.)
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}

# Logs: readable text in development; one JSON object per line (python-json-logger) for a
# log shipper, the default without DEBUG. A record's `extra` fields become JSON keys (the
# `streaming.finished` record of every stream carries its figures).
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text" if DEBUG else "json").strip().lower()
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").strip().upper()
if LOG_FORMAT not in ("text", "json"):
    ENV_PROBLEMS.append(("LOG_FORMAT", f"must be text or json, not {LOG_FORMAT!r}"))
    LOG_FORMAT = "text"
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    ENV_PROBLEMS.append(("LOG_LEVEL", f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not {LOG_LEVEL!r}"))
    LOG_LEVEL = "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json" if LOG_FORMAT == "json" else "text"}},
    # Everything through one handler: the server's own records, Django's and the ASGI server's.
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# The model upstream (docs/protocol.md, Configuration).
LLM_PROVIDER = os.environ.get("LLM_PROVIDER", "demo")
LLM_BASE_URL = os.environ.get("LLM_BASE_URL", "")
LLM_API_KEY = os.environ.get("LLM_API_KEY", "")
LLM_MODEL = os.environ.get("LLM_MODEL", "")
LLM_CONNECT_TIMEOUT = env_float("LLM_CONNECT_TIMEOUT", 10)
LLM_READ_TIMEOUT = env_float("LLM_READ_TIMEOUT", 60)
# Pace of the offline demo model: seconds between words (docs/protocol.md, Configuration).
LLM_DEMO_DELAY = env_float("LLM_DEMO_DELAY", 0.04)

# Stream engine limits (docs/protocol.md, Configuration).
STREAM_FLUSH_INTERVAL = env_float("STREAM_FLUSH_INTERVAL", 0.5)
STREAM_FRAME_INTERVAL = env_float("STREAM_FRAME_INTERVAL", 0.05)
STREAM_MAX_AGE = env_float("STREAM_MAX_AGE", 300)
STREAM_STALE_AFTER = env_float("STREAM_STALE_AFTER", 120)
STREAM_MAX_PER_PROCESS = env_int("STREAM_MAX_PER_PROCESS", 100)
STREAM_MAX_PER_USER = env_int("STREAM_MAX_PER_USER", 3)
STREAM_LIMIT_POLICY = os.environ.get("STREAM_LIMIT_POLICY", "reject")
STREAM_DISCONNECT_GRACE = env_float("STREAM_DISCONNECT_GRACE", 30)
# Abuse limits (README, "Limits"): prompts per user per minute (0: no limit), counted in
# the database so across every process; open sockets per user, per process.
STREAM_SENDS_PER_MINUTE = env_int("STREAM_SENDS_PER_MINUTE", 30)
SOCKETS_MAX_PER_USER = env_int("SOCKETS_MAX_PER_USER", 20)

# Worker liveness (chat/liveness.py): each server process writes a heartbeat every
# WORKER_HEARTBEAT seconds; one silent for WORKER_DEAD_AFTER is dead, and its answers are
# finalized as `orphaned` by the live workers.
WORKER_HEARTBEAT = env_float("WORKER_HEARTBEAT", 2)
WORKER_DEAD_AFTER = env_float("WORKER_DEAD_AFTER", 8)
