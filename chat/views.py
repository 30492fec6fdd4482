"""HTML pages. Reads go through selectors, writes through services; the chat itself runs over the websocket."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from . import protocol, selectors, services
from .forms import ProjectFileForm, ProjectForm
from .services import ServiceError


@login_required
def project_list(request):
    form = ProjectForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            project = services.project_create(owner=request.user, name=form.cleaned_data["name"])
        except ServiceError as exc:
            form.add_error("name", str(exc))
        else:
            return redirect("project-chat", project_id=project.pk)
    projects = selectors.project_list(user=request.user)
    return render(request, "chat/project_list.html", {"projects": projects, "form": form})


@login_required
def project_chat(request, project_id):
    project = selectors.project_get(user=request.user, project_id=project_id)
    return _render_chat(request, project, ProjectForm(initial={"name": project.name}))


@login_required
@require_POST
def project_rename(request, project_id):
    project = selectors.project_get(user=request.user, project_id=project_id)
    form = ProjectForm(request.POST)
    if form.is_valid():
        try:
            services.project_rename(project=project, name=form.cleaned_data["name"])
        except ServiceError as exc:
            form.add_error("name", str(exc))
        else:
            messages.success(request, "Project renamed.")
            return redirect("project-chat", project_id=project.pk)
    # The failed name must not leak into the page title: reload the stored one.
    project.refresh_from_db()
    return _render_chat(request, project, form)


@login_required
def project_files(request, project_id):
    project = selectors.project_get(user=request.user, project_id=project_id)
    form = ProjectFileForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.project_file_create(
                project=project, name=form.cleaned_data["name"], content=form.cleaned_data["content"]
            )
        except ServiceError as exc:
            form.add_error("name", str(exc))
        else:
            messages.success(request, f"Added {form.cleaned_data['name']}.")
            return redirect("project-files", project_id=project.pk)
    files = selectors.project_file_list(project=project)
    return render(request, "chat/project_files.html", {"project": project, "files": files, "form": form})


@login_required
def project_file(request, project_id, file_id):
    project = selectors.project_get(user=request.user, project_id=project_id)
    project_file = selectors.project_file_get(project=project, file_id=file_id)
    return render(request, "chat/project_file.html", {"project": project, "file": project_file})


@login_required
@require_POST
def project_file_delete(request, project_id, file_id):
    project = selectors.project_get(user=request.user, project_id=project_id)
    project_file = selectors.project_file_get(project=project, file_id=file_id)
    services.project_file_delete(project_file=project_file)
    messages.success(request, f"Deleted {project_file.name}.")
    return redirect("project-files", project_id=project.pk)


def _render_chat(request, project, rename_form):
    history = [{**protocol.message_dict(message), "display_content": message.display_content,
                "usage": protocol.usage(message)} for message in selectors.visible_messages(project=project)]
    context = {
        "project": project,
        "projects": selectors.project_list(user=request.user),
        "rename_form": rename_form,
        "messages_data": history,
        "file_names": [f.name for f in selectors.project_file_list(project=project)],
    }
    return render(request, "chat/project_chat.html", context)
