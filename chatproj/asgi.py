"""ASGI entry point: `daphne chatproj.asgi:application`, or uvicorn (README, "Production")."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the app modules below are imported

from chatproj.checks import refuse_to_start_on_errors  # noqa: E402

refuse_to_start_on_errors()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path, re_path  # noqa: E402

from chat.consumers import ChatConsumer, NoRouteConsumer  # noqa: E402
from chat.process import install_daphne_hooks, lifespan  # noqa: E402
from chatproj.origin import SameOriginValidator  # noqa: E402

websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/chat/", ChatConsumer.as_asgi()),
    re_path(r"", NoRouteConsumer.as_asgi()),
]

install_daphne_hooks()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        "lifespan": lifespan,
    }
)
