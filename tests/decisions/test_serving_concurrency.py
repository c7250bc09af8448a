"""Served models under concurrency: one load per weights hash however many threads ask at
once, an LRU bound, and two predictions at the same moment each recording exactly its own
decisions; the purge as the beat schedule runs it, through the real worker."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from decisions import serving
from decisions.models import Decision
from decisions.services import decisions_make
from mlops.models import ModelVersion
from tests.decisions.helpers import row, trained_version
from tests.mlops.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _in_threads(target, n: int) -> list:
    results, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(i):
        try:
            barrier.wait()
            results[i] = target(i)
        except Exception as exc:  # collected: an assertion in a thread would be lost
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def test_a_model_is_loaded_once_however_many_threads_ask(settings):
    version = trained_version()
    serving.served_models_clear()
    before = serving.loads["count"]
    models = _in_threads(lambda i: serving.served_model(model_version=ModelVersion.objects.get(pk=version.pk)), 6)
    assert serving.loads["count"] == before + 1
    assert all(m is models[0] for m in models)
    assert serving.served_model_keys() == [version.artifact_sha256]


def test_the_cache_keeps_the_last_versions_served(settings):
    settings.DECISION_MODEL_CACHE_SIZE = 1
    first, second = trained_version(seed=3), trained_version(seed=4)
    serving.served_models_clear()
    serving.served_model(model_version=first)
    serving.served_model(model_version=second)
    assert serving.served_model_keys() == [second.artifact_sha256]
    before = serving.loads["count"]
    serving.served_model(model_version=first)
    assert serving.loads["count"] == before + 1


def test_two_predictions_at_once_record_exactly_their_own_decisions():
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need a server database; SQLite's in-memory test database locks its tables")
    version = trained_version()
    serving.served_models_clear()
    sizes = [7, 5, 9, 3]

    def predict(i):
        fresh = ModelVersion.objects.select_related("training_run__snapshot__dataset").get(pk=version.pk)
        return decisions_make(model_version=fresh, rows=[row(10 * i + k) for k in range(sizes[i])], explain=i % 2 == 0)

    answers = _in_threads(predict, len(sizes))
    assert serving.loads["count"] >= 1
    for size, answer in zip(sizes, answers, strict=True):
        stored = list(Decision.objects.filter(batch=answer["batch"]).order_by("position"))
        assert [d.pk for d in stored] == [d["decision"] for d in answer["decisions"]]
        assert len(stored) == size
    assert Decision.objects.filter(model_version=version).count() == sum(sizes)
    assert len({a["batch"] for a in answers}) == len(sizes)


def test_the_purge_runs_in_the_worker(celery_worker, settings):
    from datetime import timedelta

    from django.utils import timezone

    from decisions.tasks import purge

    version = trained_version()
    answer = decisions_make(model_version=version, rows=[row(0), row(1)], explain=False)
    old = timezone.now() - timedelta(days=settings.DECISION_LOG_RETENTION_DAYS + 2)
    Decision.objects.filter(pk=answer["decisions"][0]["decision"]).update(decided_at=old)
    result = purge.delay()
    assert result.get(timeout=60) == {"inputs_deleted": 0, "decisions_deleted": 1}
    wait_for(lambda: Decision.objects.filter(model_version=version).count() == 1, timeout=30, what="the purge")
    assert purge.delay().get(timeout=60) == {"inputs_deleted": 0, "decisions_deleted": 0}
    assert "decisions-purge" in settings.CELERY_BEAT_SCHEDULE
