"""Page URLs; chatproj/urls.py includes them at the root."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.project_list, name="project-list"),
    path("projects/<int:project_id>/", views.project_chat, name="project-chat"),
    path("projects/<int:project_id>/rename/", views.project_rename, name="project-rename"),
    path("projects/<int:project_id>/files/", views.project_files, name="project-files"),
    path("projects/<int:project_id>/files/<int:file_id>/", views.project_file, name="project-file"),
    path(
        "projects/<int:project_id>/files/<int:file_id>/delete/",
        views.project_file_delete,
        name="project-file-delete",
    ),
]
