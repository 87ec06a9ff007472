"""Seeded draws from a pmf, so that the same seed and event id give the same choice."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def uniform_draw(seed: int, event_id: str, slot: int) -> float:
    """A number in [0, 1) that depends only on (seed, event_id, slot)."""
    digest = hashlib.blake2b(f"{seed}:{event_id}:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def normalised(scores: Sequence[float]) -> list[float]:
    """The pmf of a policy's scores: each divided by their exact sum (uniform if that is not above 0).

    VW's ``cb_explore_adf`` scores are a pmf in single precision, whose sum is 1 only up to its
    rounding; dividing by ``math.fsum`` makes the logged propensities sum to 1 in double precision,
    and, being exact arithmetic on the scores, gives the same pmf from the same scores every time.
    """
    total = math.fsum(scores)
    if not total > 0:
        return [1.0 / len(scores)] * len(scores)
    return [s / total for s in scores]


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
