"""Seeded draws from a pmf, so that the same seed and event id give the same choice."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def uniform_draw(seed: int, event_id: str, slot: int) -> float:
    """A number in [0, 1) that depends only on (seed, event_id, slot)."""
    digest = hashlib.blake2b(f"{seed}:{event_id}:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def draw(pmf: Sequence[float], u: float) -> int:
    """Inverse-CDF sampling: the index ``i`` with ``cdf[i-1] <= u < cdf[i]``.

    An entry with zero probability is never drawn; if rounding leaves ``u`` beyond the last
    cumulative value, the last positive entry is taken.
    """
    cumulative = 0.0
    last_positive = -1
    for i, p in enumerate(pmf):
        if p > 0:
            cumulative += p
            last_positive = i
            if u < cumulative:
                return i
    if last_positive < 0:
        raise ValueError("pmf has no positive entry")
    return last_positive
