"""Candidates for a Recommend that sends none, when the embeddings cannot rank the catalog.

Without embeddings (none trained yet), or for a user they know nothing of (no trained identity and
no known feature: every item would score its bias alone), a catalog larger than ``max_candidates``
is still offered, as three slices of its active items:

- **popular**: the best recent smoothed reward rate (:class:`RecentRewards`);
- **newest**: the most recently written items (new, or whose features changed): the highest
  catalog versions;
- **explore**: a uniform sample of the rest, so that every active item can be shown and learned
  (with the places the other slices could not fill: before any reward, the popular slice's).

The bandit draws from that set, so the logged probability is exact *given the set*, and the set is
logged whole with the decision. Off-policy estimates from such decisions hold for policies that
choose within the sets that were offered (see README, "Answers before any training").
"""

from __future__ import annotations

import heapq
import math
import random
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.errors import ConfigurationError
from engine.records import Outcome
from engine.types import Item


@dataclass(frozen=True, slots=True)
class ColdStartConfig:
    """How many items each slice holds, and how popularity is smoothed and forgotten."""

    popular: int = 20
    newest: int = 10
    explore: int = 20
    half_life_seconds: float = 86_400.0  # an outcome's weight halves every day
    prior_strength: float = 10.0  # pseudo-impressions at the catalog's mean rate, per item

    def validate(self) -> None:
        for name in ("popular", "newest", "explore"):
            if getattr(self, name) < 0:
                raise ConfigurationError("cold_start_candidates", f"{name} must be at least 0, got {getattr(self, name)}")
        if self.popular + self.newest + self.explore < 1:
            raise ConfigurationError("cold_start_candidates", "the slices must hold at least one item")
        if not (math.isfinite(self.half_life_seconds) and self.half_life_seconds > 0):
            raise ConfigurationError("cold_start_half_life", f"must be above 0 seconds, got {self.half_life_seconds:g}")
        if not (math.isfinite(self.prior_strength) and self.prior_strength >= 0):
            raise ConfigurationError("cold_start.prior_strength", f"must be at least 0, got {self.prior_strength:g}")

    @property
    def size(self) -> int:
        return self.popular + self.newest + self.explore


class RecentRewards:
    r"""Each item's recent impressions and reward, decayed exponentially, and its smoothed rate.

    An outcome at time :math:`t` weighs :math:`2^{-(now - t)/h}` (``h`` the half-life), so item
    :math:`i` has decayed impressions :math:`N_i = \sum_j 2^{-(now - t_j)/h}` and reward
    :math:`R_i = \sum_j r_j 2^{-(now - t_j)/h}`. Its rate is shrunk toward the catalog's
    :math:`\mu = \sum_i R_i / \sum_i N_i` by ``m`` pseudo-impressions (``prior_strength``):

    .. math::  \hat r_i = \frac{R_i + m \mu}{N_i + m}

    so an item shown twice and clicked once does not outrank one clicked 300 times in 1,000.
    Weights are kept relative to a reference time (one factor applies to all), rebased before they
    grow large.
    """

    def __init__(self, half_life_seconds: float, prior_strength: float) -> None:
        self.half_life = half_life_seconds
        self.prior = prior_strength
        self._reference: float | None = None
        self._shown: dict[str, float] = {}
        self._reward: dict[str, float] = {}

    def add(self, outcomes: Iterable[Outcome]) -> None:
        for outcome in outcomes:
            if self._reference is None:
                self._reference = outcome.ts
            exponent = (outcome.ts - self._reference) / self.half_life
            if exponent > 500:  # rebase: every weight scales by the same factor
                self._rebase(outcome.ts)
                exponent = 0.0
            weight = 2.0 ** exponent
            self._shown[outcome.item_id] = self._shown.get(outcome.item_id, 0.0) + weight
            self._reward[outcome.item_id] = self._reward.get(outcome.item_id, 0.0) + weight * outcome.reward

    def _rebase(self, reference: float) -> None:
        assert self._reference is not None
        scale = 2.0 ** ((self._reference - reference) / self.half_life)
        self._shown = {k: v * scale for k, v in self._shown.items() if v * scale > 1e-300}
        self._reward = {k: self._reward[k] * scale for k in self._shown}
        self._reference = reference

    def rates(self, now: float) -> dict[str, float]:
        """Each item's smoothed rate at ``now`` (items never shown are absent: they rate at the mean)."""
        if self._reference is None or not self._shown:
            return {}
        scale = 2.0 ** ((self._reference - now) / self.half_life)
        total_shown = sum(self._shown.values())
        mean = sum(self._reward.values()) / total_shown if total_shown > 0 else 0.0
        m = self.prior
        return {i: (self._reward[i] * scale + m * mean) / (n * scale + m) if n * scale + m > 0 else mean
                for i, n in self._shown.items()}

    def forget_faded(self, now: float, floor: float = 1e-3) -> None:
        """Drop the items whose decayed impressions fell below ``floor`` (about ten half-lives
        unseen): what the popular slice keeps stays bounded by what was shown recently."""
        if self._reference is None:
            return
        scale = 2.0 ** ((self._reference - now) / self.half_life)
        faded = [i for i, n in self._shown.items() if n * scale < floor]
        for item_id in faded:
            del self._shown[item_id], self._reward[item_id]

    def top(self, n: int, now: float, eligible: Callable[[str], bool]) -> list[str]:
        """The ``n`` eligible items with the best smoothed rate, best first (ties: more shown first)."""
        rates = self.rates(now)
        return [i for i, _ in heapq.nlargest(n, ((i, r) for i, r in rates.items() if eligible(i)),
                                              key=lambda pair: (pair[1], self._shown[pair[0]]))]


class ColdStart:
    """The cold-start candidate set of a catalog, from the outcomes the log finalises.

    ``read_outcomes(after_seq, limit)`` returns final outcomes in ``seq`` order;
    :meth:`refresh` (a background thread calls it) takes in the new ones and ranks the popular
    slice again, so that a decision reads a ready list.
    """

    def __init__(self, config: ColdStartConfig, read_outcomes: Callable[[int, int], Sequence[Outcome]],
                 start_after: int = 0) -> None:
        config.validate()
        self.config = config
        self._read = read_outcomes
        self._seq = start_after
        self._recent = RecentRewards(config.half_life_seconds, config.prior_strength)
        self._lock = threading.Lock()
        self._ranked: _Ranked | None = None
        self._changed = threading.Event()

    def catalog_changed(self) -> None:
        """The catalog was written: rank again soon (:meth:`wait_for_change` returns)."""
        self._changed.set()

    def wait_for_change(self, timeout: float) -> None:
        """Until the catalog changes or ``timeout`` seconds pass: the ranking thread's pause."""
        self._changed.wait(timeout)
        self._changed.clear()

    def refresh(self, now: float, catalog: Mapping[str, Item], batch: int = 5000, *, rank: bool = True) -> int:
        """Take in the outcomes finalised since the last look, and (with ``rank``) rank the catalog's
        popular and newest items again, off the request path. Returns how many outcomes were new."""
        with self._lock:
            taken = 0
            while True:
                outcomes = self._read(self._seq, batch)
                if not outcomes:
                    break
                self._recent.add(outcomes)
                self._seq = outcomes[-1].seq
                taken += len(outcomes)
                if len(outcomes) < batch:
                    break
            if rank:
                self._rank(now, catalog)
            return taken

    def _rank(self, now: float, catalog: Mapping[str, Item]) -> None:
        room = self.config.popular + self.config.newest + 16  # for exclusions and items gone meanwhile
        self._recent.forget_faded(now)
        popular = self._recent.top(room, now, lambda i: (item := catalog.get(i)) is not None and item.active)
        newest = heapq.nlargest(room, (i for i, item in catalog.items() if item.active), key=lambda i: catalog[i].version)
        self._ranked = _Ranked(tuple(popular), tuple(newest))

    def candidate_ids(self, catalog: Mapping[str, Item], active: Sequence[str], excluded: set[str],
                      rng: random.Random) -> list[str]:
        """The set: popular, then newest, then a uniform sample of the other ``active`` items, each
        item once; as many as the three slices hold together (a slice that cannot fill, as the
        popular one before any reward or ranking, leaves its places to the sample).

        The popular and newest slices are those the last :meth:`refresh` ranked (a few seconds ago
        at most); every item is checked against ``catalog`` as it is now. The work is bounded by the
        set's size, whatever the catalog's.
        """
        ranked = self._ranked or _Ranked((), ())
        config = self.config
        chosen: dict[str, None] = {}

        def usable(item_id: str) -> bool:
            item = catalog.get(item_id)
            return item is not None and item.active and item_id not in excluded and item_id not in chosen

        for slice_ids, size in ((ranked.popular, config.popular), (ranked.newest, config.newest)):
            taken = 0
            for item_id in slice_ids:
                if taken >= size:
                    break
                if usable(item_id):
                    chosen[item_id] = None
                    taken += 1
        explore = config.size - len(chosen)  # what the slices could not fill (no rewards yet) is explored too
        chosen.update(dict.fromkeys(_uniform_sample(active, explore, usable, rng)))
        return list(chosen)


@dataclass(frozen=True, slots=True)
class _Ranked:
    """The catalog's slices as the last refresh ranked them."""

    popular: tuple[str, ...]
    newest: tuple[str, ...]


def _uniform_sample(population: Sequence[str], k: int, usable: Callable[[str], bool], rng: random.Random,
                    scan: int = 8192) -> list[str]:
    """Up to ``k`` distinct usable items, each usable one equally likely: draws by rejection while the
    population is large (unusable ones are only the excluded and those already chosen, so rejection
    rarely fails); else, or when it does, a pass over at most ``scan`` items from a random start."""
    if k <= 0 or not population:
        return []
    picked: dict[str, None] = {}
    if len(population) > 8 * k:
        for _ in range(16 * k):
            item_id = population[rng.randrange(len(population))]
            if item_id not in picked and usable(item_id):
                picked[item_id] = None
                if len(picked) == k:
                    return list(picked)
    start = rng.randrange(len(population))
    window = [population[(start + j) % len(population)] for j in range(min(scan, len(population)))]
    rest = [i for i in window if i not in picked and usable(i)]
    picked.update(dict.fromkeys(rng.sample(rest, min(k - len(picked), len(rest)))))
    return list(picked)
