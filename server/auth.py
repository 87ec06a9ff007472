"""Bearer tokens and roles: who may call which RPC.

``--auth-tokens FILE`` names a file with one ``ROLE TOKEN`` per line (``#`` starts a comment).
The roles are ordered, ``storefront < catalog < admin``, and every RPC of the proto declares the
least role that may call it (the method option ``required_role``), so the rule for a new RPC is
written where the RPC is. Clients send ``authorization: Bearer TOKEN``:

- no token, or one the file does not hold: ``UNAUTHENTICATED``;
- a valid token below the RPC's role: ``PERMISSION_DENIED``;
- Health's ``Check`` is open to everyone (probes); ``Watch``, reflection and anything else need a
  valid token.

The check runs in an interceptor, before the request is decoded, so a refused call costs no
parsing. Tokens are kept as SHA-256 digests and compared with :func:`hmac.compare_digest`
against every entry, and are never logged. :meth:`Tokens.reload` re-reads the file (on SIGHUP);
a file that does not read keeps the tokens in force.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import stat
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.logs import access

log = logging.getLogger(__name__)

ROLES = {name.removeprefix("ROLE_").lower(): role for name, role in pb.Role.items() if role != pb.ROLE_UNSPECIFIED}
ROLE_NAMES = {role: name for name, role in ROLES.items()}
MIN_TOKEN_LENGTH = 16
OPEN_METHODS = frozenset({"/grpc.health.v1.Health/Check"})
"""Callable without a token: the probe. (Health's Watch holds a stream open, so it needs a token.)"""


class TokenFileError(ValueError):
    """The tokens file breaks its format; the message names the line, never the token."""


def method_roles() -> dict[str, int]:
    """``/recbandit.v1.Recommender/Recommend`` → the least role that may call it, from the proto."""
    roles = {}
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            role = method.GetOptions().Extensions[pb.required_role]
            if role == pb.ROLE_UNSPECIFIED:
                raise TypeError(f"{method.full_name} declares no required_role in the proto")
            roles[f"/{service.full_name}/{method.name}"] = role
    return roles


def read_tokens(path: Path) -> list[tuple[bytes, int]]:
    """The tokens of ``path`` as (SHA-256 digest, role) pairs."""
    entries: list[tuple[bytes, int]] = []
    seen: set[bytes] = set()
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise TokenFileError(f"{path}: cannot read the tokens ({getattr(error, 'strerror', None) or 'not text'})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}, line {number}"
        if len(words) != 2:
            raise TokenFileError(f"{where}: must be 'ROLE TOKEN', got {len(words)} words")
        role_name, token = words
        if role_name not in ROLES:  # never echo it: a line written "TOKEN ROLE" would show the token
            raise TokenFileError(f"{where}: must start with a role, one of {', '.join(ROLES)}")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenFileError(f"{where}: the token must have at least {MIN_TOKEN_LENGTH} characters")
        digest = _digest(token)
        if digest in seen:
            raise TokenFileError(f"{where}: the same token is given twice")
        seen.add(digest)
        entries.append((digest, ROLES[role_name]))
    if not entries:
        raise TokenFileError(f"{path}: holds no tokens")
    return entries


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Tokens:
    """The tokens of a file and their roles; :meth:`reload` swaps in the file's current content."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._entries = read_tokens(self.path)
        self._lock = threading.Lock()
        if self.path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the tokens file %s can be read by other users; chmod 600 it", self.path)

    def reload(self) -> bool:
        """Read the file again; on an error keep the tokens in force and log why (never a token).

        Reloads take turns (a lock around the read and the swap), so an older read never
        replaces a newer one; :meth:`role_of` reads whichever list is in force, without a lock.
        """
        with self._lock:
            try:
                entries = read_tokens(self.path)
            except TokenFileError as error:
                log.error("tokens not reloaded, the previous ones stay in force: %s", error)
                return False
            self._entries = entries
        log.info("reloaded %d token(s) from %s", len(entries), self.path)
        return True

    def role_of(self, token: str) -> int | None:
        """The role of ``token``, or None; the time taken does not depend on which entry matches."""
        digest = _digest(token)
        role = None
        for known, known_role in self._entries:
            if hmac.compare_digest(known, digest):
                role = known_role
        return role


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Lets a call through only with a token whose role may call its method."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens
        self._roles = method_roles()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        handler = await continuation(details)
        if method in OPEN_METHODS:
            return handler
        token = _bearer(details.invocation_metadata)
        role = self._tokens.role_of(token) if token else None
        if role is None:
            return _refusal(handler, method, grpc.StatusCode.UNAUTHENTICATED,
                            "missing or unknown token: send the metadata 'authorization: Bearer TOKEN' once")
        required = self._roles.get(method, pb.ROLE_STOREFRONT)  # reflection and the rest: any valid token
        if role < required:
            return _refusal(handler, method, grpc.StatusCode.PERMISSION_DENIED,
                            f"the {ROLE_NAMES[role]} role may not call {method}; it needs {ROLE_NAMES[required]}")
        return handler


def _bearer(metadata: Any) -> str | None:
    """The token of the one ``authorization: Bearer TOKEN`` entry; None for none, another scheme, or two."""
    values = [str(value) for key, value in metadata or () if key == "authorization"]
    if len(values) != 1:
        return None
    scheme, _, token = values[0].partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _refusal(
    handler: grpc.RpcMethodHandler | None, method: str, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    """A handler of the method's kind (unary or streaming) that answers ``code`` without reading the
    request, and writes the call's access line."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        access(method.rsplit("/", 1)[-1], code.name, 0.0, "")
        await context.abort(code, message)

    streams_in = handler is not None and handler.request_streaming
    streams_out = handler is not None and handler.response_streaming
    if streams_in and streams_out:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if streams_in:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if streams_out:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends: ``(("authorization", "Bearer TOKEN"),)``."""
    return (("authorization", f"Bearer {token}"),)
