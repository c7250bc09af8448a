from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView

from config.views import SwaggerUIView, api_not_found, healthz

api_v1 = [
    path("", include("governance.api.urls")),
    path("", include("provenance.api.urls")),
    # Before mlops: decisions adds models/<id>/predict/ beside mlops' model routes.
    path("", include("decisions.api.urls")),
    path("", include("mlops.api.urls")),
    path("", include("rights.api_urls")),
    path("", include("assessments.api_urls")),
    path("", include("webhooks.api.urls")),
]

urlpatterns = [
    # The site is the DPO's workspace: "/" (and the admin's "View site") leads to it. Not
    # permanent, so a landing page may take its place later without stale browser caches.
    path("", RedirectView.as_view(url="/admin/", permanent=False), name="home"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its script as a file (?script), so the CSP needs no inline script.
    path("api/docs/", SwaggerUIView.as_view(url_name="schema"), name="swagger-ui"),
    re_path(r"^api/", api_not_found),  # last: only what no endpoint matched
]

# Errors Django answers itself (bad requests, a missing page, a server error): JSON under
# /api/, Django's pages elsewhere.
handler400 = "config.views.error_400"
handler403 = "config.views.error_403"
handler404 = "config.views.error_404"
handler500 = "config.views.error_500"

admin.site.site_header = "Privacy Ledger"
admin.site.site_title = "Privacy Ledger"
admin.site.index_title = "Dashboard"
