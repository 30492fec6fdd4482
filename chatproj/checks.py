"""System checks of our settings: `manage.py check` runs them, and so does every server
start (chatproj/asgi.py), which refuses to serve with an error among them."""

import sys
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

PROVIDERS = ("demo", "openai", "anthropic")
POLICIES = ("reject", "cancel_oldest")
# setting -> (smallest allowed value, whether the smallest is allowed itself)
BOUNDS = {
    "LLM_CONNECT_TIMEOUT": (0, False), "LLM_READ_TIMEOUT": (0, False), "LLM_DEMO_DELAY": (0, True),
    "STREAM_FLUSH_INTERVAL": (0, False), "STREAM_FRAME_INTERVAL": (0, True), "STREAM_MAX_AGE": (0, False),
    "STREAM_STALE_AFTER": (0, False), "STREAM_MAX_PER_PROCESS": (1, True), "STREAM_MAX_PER_USER": (1, True),
    "STREAM_DISCONNECT_GRACE": (0, True), "STREAM_SENDS_PER_MINUTE": (0, True), "SOCKETS_MAX_PER_USER": (1, True),
    "LOGIN_FAILURE_LIMIT": (1, True), "SECURE_HSTS_SECONDS": (0, True), "WORKER_HEARTBEAT": (0, False),
    "WORKER_DEAD_AFTER": (0, False),
}
SETTING_FOR = {"LOGIN_FAILURE_LIMIT": "AXES_FAILURE_LIMIT"}


def error(text: str, hint: str, number: int) -> checks.Error:
    return checks.Error(text, hint=hint, id=f"stopchat.E{number:03d}")


@checks.register("stopchat")
def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    found = [error(f"{name} {problem}.", "Fix or unset the environment variable.", 1)
             for name, problem in settings.ENV_PROBLEMS]
    if settings.SECRET_KEY_MISSING:
        found.append(error("SECRET_KEY is not set, and DEBUG is off.",
                           "Set SECRET_KEY to a long random string (or DEBUG=1 for development only).", 2))
    if not settings.DEBUG and not settings.ALLOWED_HOSTS:
        found.append(error("ALLOWED_HOSTS is empty, and DEBUG is off: every request would be refused.",
                           "Set ALLOWED_HOSTS to the host names clients use, comma-separated.", 3))
    provider = (settings.LLM_PROVIDER or "").strip().lower()
    if provider not in PROVIDERS:
        found.append(error(f"LLM_PROVIDER={settings.LLM_PROVIDER!r} is not a provider.",
                           f"Use one of: {', '.join(PROVIDERS)}.", 4))
    if settings.LLM_BASE_URL:
        url = urlsplit(settings.LLM_BASE_URL)
        if url.scheme not in ("http", "https") or not url.hostname:
            found.append(error(f"LLM_BASE_URL={settings.LLM_BASE_URL!r} is not an http(s) URL.",
                               "For example https://api.openai.com/v1 or http://localhost:11434/v1.", 5))
        elif url.path.rstrip("/").endswith(("/chat/completions", "/messages")):
            found.append(error(f"LLM_BASE_URL={settings.LLM_BASE_URL!r} names an endpoint, not the API's base.",
                               "Leave out /chat/completions or /messages: the provider adds it.", 5))
    for name, (low, inclusive) in BOUNDS.items():
        value = getattr(settings, SETTING_FOR.get(name, name), None)
        if value is not None and (value < low or (value == low and not inclusive)):
            found.append(error(f"{name}={value:g} is out of range.",
                               f"It must be {'at least' if inclusive else 'more than'} {low}.", 6))
    if settings.WORKER_DEAD_AFTER <= 2 * settings.WORKER_HEARTBEAT:
        found.append(error(f"WORKER_DEAD_AFTER={settings.WORKER_DEAD_AFTER:g} leaves room for less than two "
                           f"heartbeats of WORKER_HEARTBEAT={settings.WORKER_HEARTBEAT:g}.",
                           "A live worker would be taken for dead: make it at least three heartbeats.", 9))
    if settings.STREAM_LIMIT_POLICY not in POLICIES:
        found.append(error(f"STREAM_LIMIT_POLICY={settings.STREAM_LIMIT_POLICY!r} is not a policy.",
                           f"Use one of: {', '.join(POLICIES)}.", 7))
    return found


def refuse_to_start_on_errors() -> None:
    """Run every system check (ours, Django's, the apps'); exit with their messages on an error,
    as `runserver` would: a server must not start on settings that cannot work."""
    errors = [m for m in checks.run_checks() if m.is_serious() and not m.is_silenced()]
    if errors:
        lines = [f"  {m.id}: {m.msg}" + (f" HINT: {m.hint}" if m.hint else "") for m in errors]
        sys.exit("The server cannot start; fix these settings first:\n" + "\n".join(lines))
