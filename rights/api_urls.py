from django.urls import path
from rest_framework.routers import DefaultRouter

from rights.api import ErasureRequestViewSet, RightsRequestViewSet, SubjectAccessView, SubjectPortabilityView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("erasure-requests", ErasureRequestViewSet, basename="erasure-request")
router.register("requests", RightsRequestViewSet, basename="rights-request")

urlpatterns = [
    *router.urls,
    path("subjects/access/", SubjectAccessView.as_view(), name="subject-access"),
    path("subjects/portability/", SubjectPortabilityView.as_view(), name="subject-portability"),
]
