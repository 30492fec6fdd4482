"""The websocket's Origin check: the page must come from the address the socket is served on.

Channels' AllowedHostsOriginValidator compares host names only, so a page on another
port of the same host (another app, a dev server) could open a signed-in socket. Here,
as Django's CSRF check does for a POST, the Origin must equal the scheme-less
host and port the client asked for (its Host header, a host in ALLOWED_HOSTS), or be
listed in CSRF_TRUSTED_ORIGINS.
"""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


class SameOriginValidator:
    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def origin_allowed(scope) -> bool:
    headers = dict(scope.get("headers", ()))
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if not origin or origin == "null":
        return False
    parts = urlsplit(origin)
    try:
        origin_port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or origin_port is None:
        return False
    if f"{parts.scheme}://{parts.netloc}".lower() in {o.lower() for o in settings.CSRF_TRUSTED_ORIGINS}:
        return True
    host = (headers.get(b"x-forwarded-host") if settings.USE_X_FORWARDED_HOST else None) or headers.get(b"host", b"")
    domain, port = split_domain_port(host.decode("latin-1").split(",")[0].strip())
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    # A Host without a port was sent to the default port of the scheme the page uses.
    host_port = int(port) if port else DEFAULT_PORTS[parts.scheme]
    return parts.hostname.lower() == domain.strip("[]").lower() and origin_port == host_port
