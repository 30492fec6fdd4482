from django.urls import path

from . import api, sse

urlpatterns = [
    path("projects/", api.ProjectListCreate.as_view(), name="api-projects"),
    path("projects/<int:project_id>/messages/", api.MessageList.as_view(), name="api-messages"),
    # Both forms of each, with and without the slash: the original ticket's client POSTs
    # without one, and a POST cannot be redirected to the other.
    path("projects/<int:project_id>/chat/", sse.chat_stream, name="api-chat"),
    path("projects/<int:project_id>/chat", sse.chat_stream),
    path("projects/<int:project_id>/chat/cancel", api.ChatCancel.as_view(), name="api-chat-cancel"),
    path("projects/<int:project_id>/chat/cancel/", api.ChatCancel.as_view()),
    path("projects/<int:project_id>/messages/<int:message_id>/continue/", sse.continue_stream, name="api-continue"),
    path("projects/<int:project_id>/messages/<int:message_id>/regenerate/", sse.regenerate_stream,
         name="api-regenerate"),
    path("projects/<int:project_id>/messages/<int:message_id>/select/", api.VersionSelect.as_view(),
         name="api-select-version"),
    path("streams/", api.StreamList.as_view(), name="api-streams"),
]
