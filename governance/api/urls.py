from django.urls import path
from rest_framework.routers import DefaultRouter

from governance.api import limits, reports, views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("audit-events", views.AuditEventViewSet, basename="audit-event")
router.register("purposes", views.PurposeViewSet, basename="purpose")
router.register("purpose-compatibilities", views.PurposeCompatibilityViewSet, basename="purpose-compatibility")
router.register("data-categories", views.DataCategoryViewSet, basename="data-category")
router.register("data-subject-categories", views.DataSubjectCategoryViewSet, basename="data-subject-category")
router.register("processing-activities", views.ProcessingActivityViewSet, basename="processing-activity")
router.register("consent-events", views.ConsentEventViewSet, basename="consent-event")
router.register("reports", reports.ReportJobViewSet, basename="report-job")
router.register("restrictions", limits.RestrictionViewSet, basename="restriction")
router.register("objections", limits.ObjectionViewSet, basename="objection")

urlpatterns = [
    path("reports/ropa.csv", reports.RopaCsvView.as_view(), name="ropa-csv"),
    path("whoami/", views.WhoAmIView.as_view(), name="whoami"),
    path("consent-status/", views.ConsentStatusView.as_view(), name="consent-status"),
    *router.urls,
]
