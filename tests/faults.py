"""Fault injection for the reliability tests: processes and outages the test owns.

- ``FaultProxy``: a TCP proxy between a worker and PostgreSQL (or any server). ``cut()``
  is an outage as the worker sees it: every open connection is reset and new ones are
  refused until ``restore()``. The shared PostgreSQL is never stopped.
- ``start_redis``: a Redis server of the test's own on a free port, to kill and restart.
- ``start_worker`` / ``start_server``: a real ``celery worker`` and a real HTTP server
  (``manage.py runserver``) in subprocesses on the test database.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(*, host: str | None = None, port: int | None = None) -> str:
    """The test database's URL (optionally through a proxy at host:port)."""
    db = connection.settings_dict
    if connection.vendor != "postgresql":
        pytest.skip("worker subprocesses share the test database only on PostgreSQL")
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    host = host or db["HOST"] or "127.0.0.1"
    port = port or int(db["PORT"] or 5432)
    return f"postgres://{db['USER']}{password}@{host}:{port}/{db['NAME']}"


def database_port() -> int:
    database_url()  # skips unless PostgreSQL
    return int(connection.settings_dict["PORT"] or 5432)


def wait_port(port: int, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout:.0f} s")


def stop(process: subprocess.Popen | None, *, sig: int = signal.SIGTERM) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_redis(port: int) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_port(port)
    return process


def _env(*, database: str | None, broker: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1",
        "DATABASE_URL": database or database_url(), "CELERY_BROKER_URL": broker or settings.CELERY_BROKER_URL,
        "STORAGE_ROOT": str(settings.STORAGE_ROOT),
    }
    env.pop("CELERY_RESULT_BACKEND", None)
    env.pop("CELERY_VISIBILITY_TIMEOUT", None)
    env.update(extra or {})
    return env


def start_worker(
    name: str, *, queue: str = "celery", database: str | None = None, broker: str | None = None,
    extra: dict[str, str] | None = None, concurrency: int = 1, log: Path | None = None,
) -> subprocess.Popen:
    """A real worker; ``--pool solo`` for one process (a SIGKILL kills the whole worker),
    prefork for concurrency > 1."""
    pool = ["--pool", "solo"] if concurrency == 1 else ["--pool", "prefork", "--concurrency", str(concurrency)]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("celery")), "-A", "config", "worker", *pool, "-Q", queue,
         "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO" if log else "WARNING"],
        cwd=ROOT, env=_env(database=database, broker=broker, extra=extra), stdout=out, stderr=out,
        start_new_session=True,
    )


def start_server(port: int, *, broker: str, extra: dict[str, str] | None = None) -> subprocess.Popen:
    """The API, as a user reaches it, with its own broker."""
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=ROOT, env=_env(database=None, broker=broker, extra=extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_port(port, timeout=60)
    return process


def log_tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def manage(*args: str, broker: str, extra: dict[str, str] | None = None) -> str:
    """Run a management command as an operator would, on the test database."""
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=_env(database=None, broker=broker, extra=extra),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class FaultProxy:
    """A TCP proxy to ``upstream``; ``cut()`` resets every connection and refuses new ones."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._up = True
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up:
                self._reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, target):
                self._reset(s)

    def _reset(self, s: socket.socket) -> None:
        with self._lock:
            self._open.discard(s)
        with contextlib.suppress(OSError):
            # SO_LINGER 0: the peer gets a reset, as when a server dies, not a clean close.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            # A close() alone does not wake a pump thread blocked in recv() on this socket: the
            # socket then lives on (no reset reaches the peer, whose query waits for ever) and
            # its descriptor number can be reused by the next connection. shutdown() wakes it.
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def cut(self) -> None:
        self._up = False
        with self._lock:
            live = list(self._open)
        for s in live:
            self._reset(s)

    def restore(self) -> None:
        self._up = True

    def close(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()
