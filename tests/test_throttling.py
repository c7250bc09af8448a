"""Throttles: a rate per API key, and a bound on failed authentications per client address,
both answered 429 with Retry-After. The suite runs with very high rates (tests/settings.py);
these tests lower them."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings
from rest_framework.test import APIClient

from governance.roles import DPO
from tests.conftest import make_role_client

pytestmark = pytest.mark.django_db
WHOAMI = "/api/v1/whoami/"


def _rates(**rates: str):
    return override_settings(
        REST_FRAMEWORK={
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], **rates},
        }
    )


def _assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) >= 1
    assert response.json()["detail"]


def test_a_key_over_its_rate_is_answered_429_with_retry_after():
    with _rates(api_key="3/min"):
        busy = make_role_client(DPO, username="busy")
        for _ in range(3):
            assert busy.get(WHOAMI).status_code == 200
        _assert_throttled(busy.get(WHOAMI))
        assert int(busy.get(WHOAMI)["Retry-After"]) <= 60
        # The rate is the key's: another key of another user, from the same address, is served.
        other = make_role_client(DPO, username="other")
        assert other.get(WHOAMI).status_code == 200


def test_bad_keys_from_one_address_are_answered_429_even_for_a_good_key_then():
    good = make_role_client(DPO, username="good")
    with _rates(auth_failure="5/min"):
        guesser = APIClient(REMOTE_ADDR="198.51.100.7")
        for attempt in range(5):
            guesser.credentials(HTTP_AUTHORIZATION=f"Token guess-{attempt}")
            assert guesser.get(WHOAMI).status_code == 401
        guesser.credentials(HTTP_AUTHORIZATION="Token guess-6")
        refused = guesser.get(WHOAMI)
        _assert_throttled(refused)
        assert "5/min" in refused.json()["detail"]
        # Once over, the address cannot try a key at all, not even a right one...
        guesser.credentials(HTTP_AUTHORIZATION=good._credentials["HTTP_AUTHORIZATION"])
        _assert_throttled(guesser.get(WHOAMI))
        # ...while the same key from another address is served.
        assert good.get(WHOAMI).status_code == 200


def test_a_forged_x_forwarded_for_does_not_buy_fresh_addresses():
    with _rates(auth_failure="3/min"):
        guesser = APIClient(REMOTE_ADDR="198.51.100.8")
        statuses = []
        for attempt in range(4):
            guesser.credentials(HTTP_AUTHORIZATION=f"Token guess-{attempt}", HTTP_X_FORWARDED_FOR=f"10.0.0.{attempt}")
            statuses.append(guesser.get(WHOAMI).status_code)
        assert statuses == [401, 401, 401, 429]


@override_settings(TRUSTED_PROXY_COUNT=1)
def test_behind_a_trusted_proxy_the_address_it_saw_is_counted():
    with _rates(auth_failure="2/min"):
        proxy = "192.0.2.1"  # every request arrives from the proxy
        first = APIClient(REMOTE_ADDR=proxy)
        for attempt in range(2):
            first.credentials(HTTP_AUTHORIZATION=f"Token x-{attempt}", HTTP_X_FORWARDED_FOR="forged, 203.0.113.1")
            assert first.get(WHOAMI).status_code == 401
        _assert_throttled(first.get(WHOAMI))
        second = APIClient(REMOTE_ADDR=proxy)
        second.credentials(HTTP_AUTHORIZATION="Token y", HTTP_X_FORWARDED_FOR="203.0.113.2")
        assert second.get(WHOAMI).status_code == 401  # another client behind the same proxy
