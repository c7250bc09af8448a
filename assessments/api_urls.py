from rest_framework.routers import DefaultRouter

from assessments.api import DpiaViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("dpias", DpiaViewSet, basename="dpia")

urlpatterns = [*router.urls]
