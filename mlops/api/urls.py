from django.urls import path
from rest_framework.routers import DefaultRouter

from mlops.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("training-runs", views.TrainingRunViewSet, basename="training-run")
router.register("models", views.ModelVersionViewSet, basename="model-version")
router.register("audit-policies", views.AuditPolicyViewSet, basename="audit-policy")
router.register("rectification-policies", views.RectificationPolicyViewSet, basename="rectification-policy")
router.register("output-policies", views.OutputPolicyViewSet, basename="output-policy")

urlpatterns = [
    # The model-version end of the lineage: a model is mlops's, its PROV export provenance's.
    path("lineage/models/<int:pk>/prov/", views.ModelProvView.as_view(), name="model-version-prov"),
    path(
        "datasets/<int:dataset_id>/privacy-budget/",
        views.PrivacyBudgetView.as_view(),
        name="dataset-privacy-budget",
    ),
    *router.urls,
]
