"""Page forms. They only shape input; the rules live in services (ServiceError)."""

from django import forms


class ProjectForm(forms.Form):
    name = forms.CharField(label="Project name", max_length=200)


class ProjectFileForm(forms.Form):
    name = forms.CharField(label="File name", max_length=255)
    content = forms.CharField(
        label="Content", required=False, strip=False, widget=forms.Textarea(attrs={"rows": 8})
    )
