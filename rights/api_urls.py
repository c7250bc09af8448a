from rest_framework.routers import DefaultRouter

from rights.api import ErasureRequestViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("erasure-requests", ErasureRequestViewSet, basename="erasure-request")

urlpatterns = router.urls
