"""Where a webhook may point, and the one way a delivery reaches it.

The URL is chosen by whoever registers the subscription, possibly a hostile one: a request
to 127.0.0.1, the cloud metadata address or the database's host would turn the ledger's
worker into a probe of its own network (SSRF). So only http(s); https only in production
unless ``WEBHOOK_ALLOW_HTTP``; the host is resolved and every address must be public unless
``WEBHOOK_ALLOW_PRIVATE`` (the test suite's local receiver). The check is made at
registration and again at each delivery (DNS may have changed since), and the connection
goes to the very address checked, so a second resolution cannot swap in another one. No
redirect is followed: a 3xx is a failed attempt.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from governance.services import ServiceError

_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # with its query string
    address: str  # the checked IP address the connection goes to


def _address_refusal(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for flag, words in (
        ("is_loopback", "a loopback"), ("is_link_local", "a link-local"), ("is_multicast", "a multicast"),
        ("is_private", "a private"), ("is_unspecified", "an unspecified"), ("is_reserved", "a reserved"),
    ):
        if getattr(ip, flag):
            return f"{words} address ({ip})"
    return None


def webhook_target(url: str, *, field: str = "url") -> Target:
    """The checked target of ``url``, or ServiceError naming ``field`` saying why not."""
    if not isinstance(url, str) or not url.strip():
        raise ServiceError(f"{field}: an http(s) URL is required.", field=field)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ServiceError(f"{field}: not a valid URL ({exc}).", field=field)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ServiceError(f"{field}: only http and https URLs are allowed.", field=field)
    if scheme == "http" and not settings.DEBUG and not settings.WEBHOOK_ALLOW_HTTP:
        raise ServiceError(f"{field}: https is required (deliveries carry signed notices).", field=field)
    if parts.username is not None or parts.password is not None:
        raise ServiceError(f"{field}: credentials in the URL are not allowed; deliveries are signed instead.", field=field)
    host = parts.hostname
    if not host:
        raise ServiceError(f"{field}: the URL has no host.", field=field)
    port = port or (443 if scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ServiceError(f"{field}: the host {host} cannot be resolved ({exc}).", field=field)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise ServiceError(f"{field}: the host {host} has no address.", field=field)
    if not settings.WEBHOOK_ALLOW_PRIVATE:
        for address in addresses:
            refusal = _address_refusal(address)
            if refusal:
                raise ServiceError(f"{field}: {host} resolves to {refusal}; webhooks go to public hosts only.",
                                   field=field)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme=scheme, host=host, port=port, path=path, address=addresses[0])


@dataclass(frozen=True)
class Answer:
    status: int
    body: str  # at most 500 characters


def post(*, target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST ``body`` to the checked address of ``target`` (TLS verified against its host name)."""
    if target.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    def connect_to_checked_address(address, timeout=None, source_address=None):
        # http.client resolves the host again here; the address checked is used instead.
        return socket.create_connection((target.address, address[1]), timeout, source_address)

    conn._create_connection = connect_to_checked_address
    try:
        conn.request("POST", target.path, body=body, headers=headers)
        response = conn.getresponse()
        text = response.read(2000).decode("utf-8", errors="replace")[:500]
        return Answer(status=response.status, body=text)
    finally:
        conn.close()
