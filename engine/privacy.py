"""Pseudonymous user ids: HMAC-SHA256 of the raw id under a key that never leaves the server.

With ``--pseudonymize-user-ids KEYFILE`` the engine replaces every user id it is given by
``hex(HMAC-SHA256(key, user_id))`` before anything else sees it, so the log, the export and the
embeddings trained from them hold only pseudonyms. The same raw id always maps to the same
pseudonym, so learning, retrieval and ``ForgetUser`` work unchanged; without the key the raw
id cannot be recovered or tested for. Losing the key detaches every user from their history.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

MIN_KEY_BYTES = 32


class Pseudonymizer:
    """``pseudonymize(user_id)`` → 64 hex digits."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonymisation key must have at least {MIN_KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    def __call__(self, user_id: str) -> str:
        return hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        return "Pseudonymizer(<key>)"  # never the key


def read_key(path: str | Path) -> bytes:
    """The key in ``path``: its bytes without surrounding whitespace (e.g. ``openssl rand -hex 32 > KEYFILE``)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as error:
        raise ValueError(f"{path}: cannot read the pseudonymisation key ({error.strerror})") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: the pseudonymisation key must have at least {MIN_KEY_BYTES} bytes, got {len(key)}")
    return key
