"""How the server listens: TLS (and mTLS), who may listen in plaintext, and the channel's own bounds.

- ``--tls-cert PEM --tls-key PEM`` serve TLS; adding ``--tls-client-ca PEM`` requires client
  certificates signed by that CA (mTLS).
- Plaintext is allowed on a loopback host (127.0.0.0/8, ::1, localhost). Any other ``--host``
  needs TLS, or ``--allow-insecure`` to say that something else (a mesh, a tunnel) encrypts.
- gRPC refuses a message over ``--max-request-bytes`` (``RESOURCE_EXHAUSTED``) before Python sees
  it, and never shares a port with another server unless ``--reuse-port`` asks for it.
  (Calls past ``--max-in-flight`` are refused by :class:`server.errors.InFlight`.)
"""

from __future__ import annotations

import errno
import ipaddress
import ssl
import socket
from pathlib import Path
from typing import Any

import grpc

from engine.errors import ConfigurationError
from server.settings import Settings
from server.wire import MAX_RESPONSE_BYTES

MAX_REQUEST_BYTES = 64 << 20
MAX_PENDING_CALLS = 10_000
"""Calls gRPC's core may hold before the event loop takes them. Its defaults (1,000, then 3,000)
cancel the calls of a burst with a bare ``CANCELLED`` (a tenth of 2,000 sent at once) before any
servicer sees them; held, each call's buffered bytes are bounded by HTTP/2 flow control, and
recbandit sheds with ``RESOURCE_EXHAUSTED`` (:class:`server.errors.InFlight`) or refuses calls
whose deadline passed while they waited."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: only localhost is known to be local
        return False


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings, or None for plaintext where plaintext is allowed."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigurationError("tls_cert", "--tls-cert and --tls-key go together: give both or neither")
    if settings.tls_client_ca and not settings.tls_cert:
        raise ConfigurationError("tls_client_ca", "needs --tls-cert and --tls-key (mTLS is TLS with client certificates)")
    if not settings.tls_cert:
        if not (is_loopback(settings.host) or settings.allow_insecure):
            raise ConfigurationError(
                "host", f"{settings.host} is not a loopback address: serve TLS (--tls-cert, --tls-key) "
                "or say --allow-insecure"
            )
        return None
    key_pair = (_read_pem("tls_key", settings.tls_key), _read_pem("tls_cert", settings.tls_cert))
    client_ca = _read_pem("tls_client_ca", settings.tls_client_ca) if settings.tls_client_ca else None
    _check_with_openssl(settings)
    return grpc.ssl_server_credentials([key_pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


def _check_with_openssl(settings: Settings) -> None:
    """Load the files as a TLS server would, so that a key that does not match its certificate is
    refused here in one line (gRPC would only fail to bind, later, with a misleading message)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as error:
        raise ConfigurationError("tls_cert", f"{settings.tls_cert} with the key {settings.tls_key} does not load "
                                 f"as a TLS certificate chain and its key ({error.strerror or error})") from None
    if settings.tls_client_ca:
        try:
            context.load_verify_locations(settings.tls_client_ca)
        except (ssl.SSLError, OSError) as error:
            raise ConfigurationError("tls_client_ca", f"{settings.tls_client_ca} does not load as CA certificates "
                                     f"({error.strerror or error})") from None


def _read_pem(setting: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(setting, f"cannot read {path}: {error.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigurationError(setting, f"{path} is not a PEM file")
    return data


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """gRPC's options from the settings, each checked (the port too: gRPC would bind it modulo 65536)."""
    for name in ("port", "metrics_port"):
        if not 0 <= getattr(settings, name) <= 65535:
            raise ConfigurationError(name, f"must be within 0..65535, got {getattr(settings, name)}")
    if settings.metrics_port and not (is_loopback(settings.metrics_host) or settings.allow_insecure):
        raise ConfigurationError("metrics_host", f"{settings.metrics_host} is not a loopback address, and the metrics "
                                                 "endpoint has no authentication: say --allow-insecure to serve it there")
    if not 1024 <= settings.max_request_bytes <= MAX_REQUEST_BYTES:
        raise ConfigurationError("max_request_bytes",
                                 f"must be within 1024..{MAX_REQUEST_BYTES}, got {settings.max_request_bytes}")
    if settings.max_in_flight < 1:
        raise ConfigurationError("max_in_flight", f"must be at least 1, got {settings.max_in_flight}")
    return [
        ("grpc.so_reuseport", int(settings.reuse_port)),
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
        ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
    ]


def refuse_address_in_use(host: str, port: int) -> None:
    """OSError when another process listens on ``host:port``, checked before gRPC binds (gRPC would
    log its own error line first). Port 0 is always free; other bind errors are left to gRPC."""
    if port == 0:
        return
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no listener
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise OSError(f"cannot bind {host}:{port}: the address is in use") from None
