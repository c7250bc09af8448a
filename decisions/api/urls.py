from django.urls import path
from rest_framework.routers import DefaultRouter

from decisions.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("decisions", views.DecisionViewSet, basename="decision")
router.register("reviews", views.DecisionReviewViewSet, basename="decision-review")
router.register("decision-input-retentions", views.DecisionInputRetentionViewSet, basename="decision-input-retention")

urlpatterns = [
    path("models/<int:pk>/predict/", views.PredictView.as_view(), name="model-version-predict"),
    *router.urls,
]
