"""Settings, read from the environment (see README and PROTOCOL.md)."""

import os
import tempfile
import warnings
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name, default):
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_float(name, default):
    return float(os.environ.get(name, default))


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_list(name, default):
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY") or ("dev-only-insecure-key" if DEBUG else None)
if not SECRET_KEY:
    raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")

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
    # lock instead of failing at once, and run in WAL mode (see chat/apps.py).
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
STATIC_ROOT = BASE_DIR / "staticfiles"
if DEBUG:
    # In DEBUG whitenoise serves from the source folders; STATIC_ROOT exists only after collectstatic.
    warnings.filterwarnings("ignore", message="No directory at", module="whitenoise.base")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "project-list"
LOGOUT_REDIRECT_URL = "login"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "streaming": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO"), "propagate": False},
        "chat": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO"), "propagate": False},
    },
}

# The model upstream (PROTOCOL.md, Configuration).
LLM_PROVIDER = os.environ.get("LLM_PROVIDER", "demo")
LLM_BASE_URL = os.environ.get("LLM_BASE_URL", "")
LLM_API_KEY = os.environ.get("LLM_API_KEY", "")
LLM_MODEL = os.environ.get("LLM_MODEL", "")
LLM_CONNECT_TIMEOUT = env_float("LLM_CONNECT_TIMEOUT", 10)
LLM_READ_TIMEOUT = env_float("LLM_READ_TIMEOUT", 60)
# Pace of the offline demo model: seconds between words (an extension of PROTOCOL.md).
LLM_DEMO_DELAY = env_float("LLM_DEMO_DELAY", 0.04)

# Stream engine limits (PROTOCOL.md, Configuration).
STREAM_FLUSH_INTERVAL = env_float("STREAM_FLUSH_INTERVAL", 0.5)
STREAM_FRAME_INTERVAL = env_float("STREAM_FRAME_INTERVAL", 0.05)
STREAM_MAX_AGE = env_float("STREAM_MAX_AGE", 300)
STREAM_STALE_AFTER = env_float("STREAM_STALE_AFTER", 120)
STREAM_MAX_PER_PROCESS = env_int("STREAM_MAX_PER_PROCESS", 100)
STREAM_MAX_PER_USER = env_int("STREAM_MAX_PER_USER", 3)
STREAM_LIMIT_POLICY = os.environ.get("STREAM_LIMIT_POLICY", "reject")
STREAM_DISCONNECT_GRACE = env_float("STREAM_DISCONNECT_GRACE", 30)
if STREAM_LIMIT_POLICY not in {"reject", "cancel_oldest"}:
    raise RuntimeError("STREAM_LIMIT_POLICY must be 'reject' or 'cancel_oldest'")
