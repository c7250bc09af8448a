from rest_framework.routers import DefaultRouter

from webhooks.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("webhooks", views.WebhookSubscriptionViewSet, basename="webhook")

urlpatterns = router.urls
