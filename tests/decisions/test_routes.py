"""The decision routes enforce the role policy written apart from the code (tests/api_routes.py)."""

from __future__ import annotations

from tests.api_routes import ROLE_POLICY, api_routes

MINE = ("/api/v1/decisions/", "/api/v1/reviews/", "/api/v1/decision-input-retentions/", "/api/v1/models/999999999/predict/")


def test_every_decision_route_is_in_the_policy_and_enforces_it():
    # HEAD follows GET (DRF adds it to a viewset's actions once a request was served).
    routes = {(r.method, r.path): r.allowed for r in api_routes() if r.path.startswith(MINE) and r.method != "HEAD"}
    policy = {k: v for k, v in ROLE_POLICY.items() if k[1].startswith(MINE)}
    assert set(routes) == set(policy), sorted(set(routes) ^ set(policy))
    for key, allowed in policy.items():
        assert routes[key] == allowed, (key, sorted(routes[key]), sorted(allowed))
