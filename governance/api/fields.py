"""Serializer fields shared by every app's API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from rest_framework import serializers


class PositiveFloatField(serializers.FloatField):
    """A number strictly above 0 (ε, δ, σ, a budget cap): 0 is refused, naming the field, and
    the schema says so (``exclusiveMinimum``), so a generated client never sends it."""

    default_error_messages = {"not_positive": "Must be above 0."}

    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if not value > 0:
            self.fail("not_positive")
        return value


class PositiveFloatFieldSchema(OpenApiSerializerFieldExtension):
    target_class = PositiveFloatField

    def map_serializer_field(self, auto_schema, direction):
        schema = auto_schema._map_serializer_field(self.target, direction, bypass_extensions=True)
        return {**schema, "minimum": 0, "exclusiveMinimum": True}
