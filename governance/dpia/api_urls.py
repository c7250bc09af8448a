from django.urls import path
from rest_framework.routers import DefaultRouter

from governance.dpia.api import DpiaViewSet, ReportJobViewSet, RopaCsvView

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("dpias", DpiaViewSet, basename="dpia")
router.register("reports", ReportJobViewSet, basename="report-job")

urlpatterns = [path("reports/ropa.csv", RopaCsvView.as_view(), name="ropa-csv"), *router.urls]
