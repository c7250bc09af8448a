"""Served models, loaded once per process and kept by the SHA-256 of their weights.

A web worker (or a Celery worker) that answers predictions keeps the last
``DECISION_MODEL_CACHE_SIZE`` model versions it served in memory: loading a version reads
and hash-checks its safetensors file and builds its modules, which costs far more than a
forward pass. The key is the artifact's SHA-256, so a version whose weights changed (a
retrain writes a new file) is never served from a stale entry, and two versions with the
same weights share one. Loading is done once per key even when several threads ask for it
at the same moment (one lock per key); the LRU bookkeeping has its own lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from django.conf import settings

from mlops.models import ModelVersion

_entries: OrderedDict[str, object] = OrderedDict()
_entries_lock = threading.Lock()
_loading_locks: dict[str, threading.Lock] = {}
# How many times a version's weights were read from disk in this process (tests, benchmarks).
loads = {"count": 0}


def served_model(*, model_version: ModelVersion):
    """The ``mlops.engine.explain.Ensemble`` of a version (one model or a SISA ensemble)."""
    from mlops.engine.explain import Ensemble
    from mlops.services import model_version_load

    key = model_version.artifact_sha256
    with _entries_lock:
        if key in _entries:
            _entries.move_to_end(key)
            return _entries[key]
        lock = _loading_locks.setdefault(key, threading.Lock())
    with lock:
        with _entries_lock:
            if key in _entries:  # loaded by the thread we waited for
                _entries.move_to_end(key)
                return _entries[key]
        ensemble = Ensemble(model_version_load(model_version=model_version))
        with _entries_lock:
            loads["count"] += 1
            _entries[key] = ensemble
            _entries.move_to_end(key)
            while len(_entries) > max(1, settings.DECISION_MODEL_CACHE_SIZE):
                evicted, _ = _entries.popitem(last=False)
                _loading_locks.pop(evicted, None)
            return ensemble


def served_models_clear() -> None:
    """Forget every loaded model (tests; a process that wants its memory back)."""
    with _entries_lock:
        _entries.clear()
        _loading_locks.clear()


def served_model_keys() -> list[str]:
    with _entries_lock:
        return list(_entries)
