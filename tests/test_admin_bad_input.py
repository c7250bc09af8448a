"""Every admin page a DPO can reach, with the odd URLs a browser can produce: never a server error.

Walks every registered model, so a new admin page is covered without writing a test."""

from __future__ import annotations

import pytest
from django.contrib import admin

ODD_QUERIES = ["?q=%00", "?q=a%00b", "?q=%ED%A0%80", "?q=" + "x" * 5000, "?o=99", "?p=99999999999999999999",
               "?id__exact=99999999999999999999", "?no_such_filter=1"]
ODD_IDS = ["99999999999999999999", "%00", "abc", "-1"]

MODELS = sorted(admin.site._registry, key=lambda m: m._meta.label)


@pytest.mark.django_db
@pytest.mark.parametrize("model", MODELS, ids=[m._meta.label for m in MODELS])
def test_odd_admin_urls_are_never_a_server_error(admin_client, model):
    base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
    for query in ODD_QUERIES:
        response = admin_client.get(base + query)
        assert response.status_code < 500, f"{base}{query[:40]} -> {response.status_code}"
    for object_id in ODD_IDS:
        for suffix in ("change/", "history/", "delete/"):
            response = admin_client.get(f"{base}{object_id}/{suffix}")
            assert response.status_code < 500, f"{base}{object_id}/{suffix} -> {response.status_code}"
