from django.urls import path
from rest_framework.routers import DefaultRouter

from governance.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("audit-events", views.AuditEventViewSet, basename="audit-event")

urlpatterns = [path("whoami/", views.WhoAmIView.as_view(), name="whoami"), *router.urls]
