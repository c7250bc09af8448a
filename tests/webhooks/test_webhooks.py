"""Signed webhooks told when a model version's status changes (issue 20, taint notifications).

Deliveries go to a real HTTP server on 127.0.0.1 through a real Celery worker (on
PostgreSQL and Redis when configured). The signature is checked here the way a receiver
would, with hmac and the secret the API answered once, not with the ledger's own code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from governance.models import AuditEvent
from mlops.models import ModelStatus, ModelVersion, RunStatus, TrainingRun
from mlops.selectors import NEUTRAL_STATUS_REASONS
from mlops.services.registry import model_version_retire, model_versions_taint_trained_before
from mlops.services.status import model_versions_status_set
from tests.mlops.factories import make_snapshot
from tests.mlops.helpers import wait_for
from tests.webhooks.receiver import Receiver
from webhooks import services
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription

# Without a broker the first attempt runs in-process at the commit and retries wait for the
# beat sweep, which the embedded mode does not run.
needs_a_broker = pytest.mark.skipif(django_settings.CELERY_EMBEDDED, reason="retries need a broker and a worker")

SECRET_REASON = "erasure request 41 (Art. 17(1)(b)): 1 person removed from snapshot"


@pytest.fixture
def receiver():
    server = Receiver(codes=[200]).start()
    yield server
    server.stop()


@pytest.fixture
def fast_retries(settings):
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0.2
    settings.WEBHOOK_RETRY_MAX_SECONDS = 1
    settings.WEBHOOK_MAX_ATTEMPTS = 3
    settings.WEBHOOK_TIMEOUT_SECONDS = 5
    return settings


def _version(snapshot, *, name: str = "risk-model") -> ModelVersion:
    run = TrainingRun.objects.create(
        name=name, snapshot=snapshot, target_delta=1e-5, status=RunStatus.SUCCEEDED, trained_on_amendment=0)
    number = ModelVersion.objects.filter(name=name).count() + 1
    return ModelVersion.objects.create(
        training_run=run, name=name, version=number, artifact_path=f"runs/{run.pk}/model.pt",
        artifact_sha256="0" * 64, epsilon=1.0, delta=1e-5,
    )


def _subscribe(client, *, url: str, events=("tainted",), dataset=None, model_name=None) -> dict:
    response = client.post("/api/v1/webhooks/", {
        "url": url, "dataset": dataset, "model_name": model_name, "events": list(events)}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def _verifies(secret: str, header: str, body: bytes) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@pytest.mark.integration
def test_a_taint_after_an_erasure_reaches_the_receiver_signed_with_the_secret_answered_once(
        celery_worker, ml_client, receiver):
    snapshot = make_snapshot(n=20, d=2)
    version = _version(snapshot)
    before = version.status_changed_at
    created = _subscribe(ml_client, url=receiver.url, dataset=snapshot.dataset_id)
    secret = created["secret"]
    assert secret.startswith("whsec_")
    stored = WebhookSubscription.objects.get(pk=created["id"])
    assert secret not in stored.secret_encrypted  # encrypted at rest
    assert "secret" not in ml_client.get(f"/api/v1/webhooks/{created['id']}/").json()  # shown once

    result = model_versions_taint_trained_before(
        amendments=[{"snapshot": snapshot.pk, "sequence": 1}], reason=SECRET_REASON)
    assert result["newly_tainted"] == [version.pk]

    wait_for(lambda: WebhookDelivery.objects.filter(status=DeliveryStatus.DELIVERED).exists(), timeout=60,
             what="the delivery")
    assert len(receiver.received) == 1
    got = receiver.received[0]
    assert got.path == "/hooks/ledger"
    assert got.headers["X-Ledger-Event"] == "model_version.status_changed"
    assert _verifies(secret, got.headers["X-Ledger-Signature"], got.body)
    assert not _verifies("whsec_" + "x" * 43, got.headers["X-Ledger-Signature"], got.body)
    assert not _verifies(secret, got.headers["X-Ledger-Signature"], got.body.replace(b"tainted", b"active"))
    body = json.loads(got.body)
    version.refresh_from_db()
    assert version.status == ModelStatus.TAINTED and version.status_changed_at > before
    assert body["event"] == "model_version.status_changed"
    assert body["delivery_id"] == got.headers["X-Ledger-Delivery"]
    assert body["dataset"] == snapshot.dataset_id
    assert body["model_version"] == {
        "id": version.pk, "name": "risk-model", "version": 1, "status": "tainted", "previous_status": "active",
        # An ML engineer's webhook is told that the data changed, never which erasure.
        "reason": NEUTRAL_STATUS_REASONS[ModelStatus.TAINTED],
        "status_changed_at": version.status_changed_at.isoformat(), "external": False,
    }
    assert "sent_at" in body
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 1 and delivery.last_status_code == 200 and str(delivery.delivery_id) == body["delivery_id"]
    listed = ml_client.get(f"/api/v1/webhooks/{created['id']}/deliveries/").json()
    assert [(d["status"], d["attempts"]) for d in listed["results"]] == [("delivered", 1)]

    # A delivered delivery is never sent again, whoever asks.
    assert services.webhook_delivery_attempt(delivery_pk=delivery.pk) == DeliveryStatus.DELIVERED
    services.webhook_deliveries_sweep()
    assert len(receiver.received) == 1


@pytest.mark.integration
def test_a_dpo_webhook_carries_the_registry_reason_and_a_retirement_is_sent(celery_worker, dpo_client, receiver):
    snapshot = make_snapshot(n=20, d=2)
    version = _version(snapshot, name="dpo-model")
    created = _subscribe(dpo_client, url=receiver.url, model_name="dpo-model", events=["retired"])

    model_version_retire(model_version=version, reason="retired by the DPO: erasure request 7")

    wait_for(lambda: len(receiver.received) == 1, timeout=60, what="the delivery")
    body = json.loads(receiver.received[0].body)
    assert body["model_version"]["status"] == "retired" and body["model_version"]["previous_status"] == "active"
    assert body["model_version"]["reason"] == "retired by the DPO: erasure request 7"
    assert _verifies(created["secret"], receiver.received[0].headers["X-Ledger-Signature"], receiver.received[0].body)


@pytest.mark.integration
@needs_a_broker
def test_a_receiver_answering_500_twice_gets_the_delivery_on_the_third_attempt(
        celery_worker, ml_client, fast_retries):
    server = Receiver(codes=[500, 500, 200], answer_body=b"x" * 5000).start()
    try:
        snapshot = make_snapshot(n=20, d=2)
        version = _version(snapshot)
        _subscribe(ml_client, url=server.url, events=["stale"])

        model_versions_status_set(ids=[version.pk], status=ModelStatus.STALE, reason="rectified")

        wait_for(lambda: WebhookDelivery.objects.filter(status=DeliveryStatus.DELIVERED).exists(), timeout=60,
                 what="the third attempt")
    finally:
        server.stop()
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 3 and delivery.last_status_code == 200 and delivery.last_error == ""
    assert len(server.received) == 3
    # Every attempt is the same delivery: the receiver deduplicates on its id.
    assert {r.headers["X-Ledger-Delivery"] for r in server.received} == {str(delivery.delivery_id)}
    assert len(delivery.last_response) == 500  # the receiver's body is not kept beyond 500 characters


@pytest.mark.integration
@needs_a_broker
def test_a_receiver_that_is_down_fails_after_the_last_attempt_and_the_admin_shows_it_and_sends_it_again(
        celery_worker, ml_client, fast_retries, admin_client):
    server = Receiver(codes=[200]).start()
    url = server.url
    server.stop()  # nothing listens on that port any more
    snapshot = make_snapshot(n=20, d=2)
    version = _version(snapshot)
    _subscribe(ml_client, url=url, events=["superseded"])

    model_versions_status_set(ids=[version.pk], status=ModelStatus.SUPERSEDED, reason="superseded by version 2")

    wait_for(lambda: WebhookDelivery.objects.filter(status=DeliveryStatus.FAILED).exists(), timeout=60,
             what="the delivery to fail")
    delivery = WebhookDelivery.objects.get()
    assert delivery.attempts == 3 and delivery.last_status_code is None
    assert "ConnectionRefused" in delivery.last_error

    page = admin_client.get("/admin/webhooks/webhookdelivery/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Failed (every attempt refused or unanswered)" in text and "ConnectionRefused" in text
    assert admin_client.get(f"/admin/webhooks/webhookdelivery/{delivery.pk}/change/").status_code == 200

    # The receiver is back on the same port: the DPO sends the failed delivery again.
    server = Receiver(codes=[200], port=server.server.server_address[1]).start()
    try:
        response = admin_client.post("/admin/webhooks/webhookdelivery/", {
            "action": "send_again", "_selected_action": [delivery.pk]})
        assert response.status_code == 302
        wait_for(lambda: WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.DELIVERED).exists(),
                 timeout=60, what="the delivery sent again")
    finally:
        server.stop()
    assert len(server.received) == 1
    assert server.received[0].headers["X-Ledger-Delivery"] == str(delivery.delivery_id)
    assert AuditEvent.objects.filter(action="webhook.delivery_resent", object_id=str(delivery.pk)).exists()


@pytest.mark.integration
def test_the_sweep_sends_a_delivery_whose_attempt_was_lost(celery_worker, ml_client, receiver):
    snapshot = make_snapshot(n=20, d=2)
    version = _version(snapshot)
    created = _subscribe(ml_client, url=receiver.url)
    # As a worker killed mid-attempt leaves it: pending, one attempt counted, its lease past.
    delivery = WebhookDelivery.objects.create(
        subscription_id=created["id"], model_version_id=version.pk, attempts=1,
        next_attempt_at=timezone.now() - timedelta(seconds=1),
        payload={"event": "model_version.status_changed", "model_version": {"id": version.pk}},
    )

    assert services.webhook_deliveries_sweep() == 1

    wait_for(lambda: WebhookDelivery.objects.filter(pk=delivery.pk, status=DeliveryStatus.DELIVERED).exists(),
             timeout=60, what="the swept delivery")
    assert WebhookDelivery.objects.get(pk=delivery.pk).attempts == 2
    assert len(receiver.received) == 1


@pytest.mark.django_db
def test_subscriptions_filter_by_dataset_model_name_and_event(ml_client, django_capture_on_commit_callbacks):
    here, elsewhere = make_snapshot(n=10, d=2), make_snapshot(n=10, d=2)
    version = _version(here, name="fraud")
    url = "http://127.0.0.1:9/hook"
    hooks = {
        "dataset": _subscribe(ml_client, url=url, dataset=here.dataset_id)["id"],
        "other dataset": _subscribe(ml_client, url=url, dataset=elsewhere.dataset_id)["id"],
        "name": _subscribe(ml_client, url=url, model_name="fraud")["id"],
        "other name": _subscribe(ml_client, url=url, model_name="churn")["id"],
        "both": _subscribe(ml_client, url=url, dataset=here.dataset_id, model_name="fraud")["id"],
        "other event": _subscribe(ml_client, url=url, events=["retired", "stale"])["id"],
        "everything": _subscribe(ml_client, url=url, events=["tainted", "retired"])["id"],
    }
    inactive = _subscribe(ml_client, url=url)["id"]
    assert ml_client.post(f"/api/v1/webhooks/{inactive}/deactivate/").status_code == 200

    with django_capture_on_commit_callbacks(execute=False):
        made = services.webhook_deliveries_create(
            model_version_ids=[version.pk], status="tainted", reason="r", previous={version.pk: "active"})

    got = set(WebhookDelivery.objects.filter(pk__in=made).values_list("subscription_id", flat=True))
    assert got == {hooks["dataset"], hooks["name"], hooks["both"], hooks["everything"]}
    filtered = ml_client.get("/api/v1/webhooks/", {"dataset": here.dataset_id}).json()
    assert {h["id"] for h in filtered["results"]} == {hooks["dataset"], hooks["both"]}


@pytest.mark.django_db
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/hook", "http://localhost/hook", "http://10.1.2.3/", "http://192.168.0.10/",
    "http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://224.0.0.1/", "http://0.0.0.0/",
    "http://[::ffff:127.0.0.1]/",
])
def test_a_private_address_is_refused_naming_url(ml_client, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE = False
    response = ml_client.post("/api/v1/webhooks/", {"url": url, "events": ["tainted"]}, format="json")
    assert response.status_code == 400, response.content
    assert "url" in response.json()
    assert not WebhookSubscription.objects.exists()
    assert not AuditEvent.objects.filter(action="webhook.subscription_created").exists()


@pytest.mark.django_db
@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://example.com/x", "events": ["tainted"]}, "url"),
    ({"url": "https://user:pw@example.com/x", "events": ["tainted"]}, "url"),
    ({"url": "http://127.0.0.1/x", "events": []}, "events"),
    ({"url": "http://127.0.0.1/x", "events": ["exploded"]}, "events"),
    ({"url": "http://127.0.0.1/x", "events": ["tainted"], "dataset": 999999999}, "dataset"),
    ({"url": "http://127.0.0.1/x", "events": ["tainted"], "model_name": ""}, "model_name"),
])
def test_bad_input_is_refused_naming_the_field(ml_client, body, field):
    response = ml_client.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not WebhookSubscription.objects.exists()


@pytest.mark.django_db
def test_plain_http_is_refused_in_production_unless_allowed(ml_client, settings):
    settings.DEBUG, settings.WEBHOOK_ALLOW_HTTP = False, False
    body = {"url": "http://127.0.0.1:9/hook", "events": ["tainted"]}
    response = ml_client.post("/api/v1/webhooks/", body, format="json")
    assert response.status_code == 400 and "https" in response.json()["url"][0]
    settings.WEBHOOK_ALLOW_HTTP = True
    assert ml_client.post("/api/v1/webhooks/", body, format="json").status_code == 201


@pytest.mark.django_db
def test_the_address_is_checked_again_at_delivery(ml_client, settings, receiver):
    created = _subscribe(ml_client, url=receiver.url)
    version = _version(make_snapshot(n=10, d=2))
    delivery = WebhookDelivery.objects.create(
        subscription_id=created["id"], model_version_id=version.pk, payload={"event": "model_version.status_changed"})
    settings.WEBHOOK_ALLOW_PRIVATE = False  # as if the name now resolved to a private address
    settings.WEBHOOK_MAX_ATTEMPTS = 1

    assert services.webhook_delivery_attempt(delivery_pk=delivery.pk) == DeliveryStatus.FAILED

    assert receiver.received == []
    assert "loopback" in WebhookDelivery.objects.get(pk=delivery.pk).last_error


@pytest.mark.django_db
def test_a_redirect_is_not_followed(ml_client, settings):
    target = Receiver(codes=[200]).start()
    redirecting = Receiver(codes=[302], extra_headers={"Location": target.url}).start()
    try:
        created = _subscribe(ml_client, url=redirecting.url)
        version = _version(make_snapshot(n=10, d=2))
        delivery = WebhookDelivery.objects.create(
            subscription_id=created["id"], model_version_id=version.pk, payload={"event": "x"})
        settings.WEBHOOK_MAX_ATTEMPTS = 1
        assert services.webhook_delivery_attempt(delivery_pk=delivery.pk) == DeliveryStatus.FAILED
    finally:
        redirecting.stop()
        target.stop()
    assert len(redirecting.received) == 1 and target.received == []
    assert "redirects are not followed" in WebhookDelivery.objects.get(pk=delivery.pk).last_error


@pytest.mark.django_db
def test_an_engineer_sees_only_their_webhooks_and_deactivation_is_audited(ml_client, role_client, dpo_client):
    mine = _subscribe(ml_client, url="http://127.0.0.1:9/mine")
    other = role_client("ml_engineer", username="another_engineer")
    theirs = _subscribe(other, url="http://127.0.0.1:9/theirs")

    assert [h["id"] for h in ml_client.get("/api/v1/webhooks/").json()["results"]] == [mine["id"]]
    assert ml_client.get(f"/api/v1/webhooks/{theirs['id']}/").status_code == 404
    assert ml_client.post(f"/api/v1/webhooks/{theirs['id']}/deactivate/").status_code == 404
    assert {h["id"] for h in dpo_client.get("/api/v1/webhooks/").json()["results"]} == {mine["id"], theirs["id"]}

    response = ml_client.post(f"/api/v1/webhooks/{mine['id']}/deactivate/")
    assert response.status_code == 200 and response.json()["active"] is False
    assert ml_client.post(f"/api/v1/webhooks/{mine['id']}/deactivate/").status_code == 409
    actions = list(AuditEvent.objects.filter(object_type="webhook_subscription", object_id=str(mine["id"]))
                   .order_by("pk").values_list("action", flat=True))
    assert actions == ["webhook.subscription_created", "webhook.subscription_deactivated"]


@pytest.mark.django_db
def test_the_status_setter_moves_status_changed_at_only_on_a_change_and_announces_it(
        django_capture_on_commit_callbacks):
    from mlops.signals import model_version_status_changed

    snapshot = make_snapshot(n=10, d=2)
    changing, already = _version(snapshot, name="a"), _version(snapshot, name="b")
    model_versions_status_set(ids=[already.pk], status=ModelStatus.STALE, reason="old")
    already.refresh_from_db()
    heard = []

    def listen(**kwargs):
        heard.append(kwargs)

    model_version_status_changed.connect(listen, dispatch_uid="test-listen")
    try:
        with django_capture_on_commit_callbacks(execute=True):
            n = model_versions_status_set(ids=[changing.pk, already.pk], status=ModelStatus.STALE, reason="new")
    finally:
        model_version_status_changed.disconnect(dispatch_uid="test-listen")

    assert n == 1
    assert len(heard) == 1
    assert heard[0]["model_version_ids"] == [changing.pk]
    assert heard[0]["status"] == "stale" and heard[0]["reason"] == "new"
    assert heard[0]["previous"] == {changing.pk: "active"}
    before = already.status_changed_at
    already.refresh_from_db()
    changing.refresh_from_db()
    assert already.status_changed_at == before and already.status_reason == "new"
    assert changing.status == ModelStatus.STALE and changing.status_changed_at > before
