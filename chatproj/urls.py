from django.contrib import admin
from django.urls import include, path

from chat.api import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("api/", include("chat.api_urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("chat.urls")),
]
