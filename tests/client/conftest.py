"""The client tests talk to pytest-django's live server over HTTP."""

from __future__ import annotations

import pytest
from django.db import connections


@pytest.fixture(autouse=True)
def _live_server_requests_close_their_database_connection():
    """With CONN_MAX_AGE > 0 (PostgreSQL settings) a live-server thread keeps its database
    session after answering, and the session-scoped server outlives the tests: the test
    database's teardown then finds it still in use. Requests of these tests close theirs."""
    settings_dict = connections.settings["default"]
    previous = settings_dict.get("CONN_MAX_AGE", 0)
    settings_dict["CONN_MAX_AGE"] = 0
    yield
    settings_dict["CONN_MAX_AGE"] = previous
