from django.urls import path
from rest_framework.routers import DefaultRouter

from provenance.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("datasets", views.DatasetViewSet, basename="dataset")
router.register("snapshots", views.SnapshotViewSet, basename="snapshot")

urlpatterns = [
    path("subjects/impact/", views.SubjectImpactView.as_view(), name="subject-impact"),
    path("retention/purge/", views.RetentionPurgeView.as_view(), name="retention-purge"),
    *router.urls,
]
