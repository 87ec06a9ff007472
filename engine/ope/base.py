"""What every estimator shares: the :class:`Estimate`, the seeded bootstrap, per-slot evaluation.

Every estimator here has the form

    V = mean_i(d_i) + sum_i(a_i) / sum_i(b_i)

with per-decision terms ``d`` (a direct part), ``a`` (a weighted part) and ``b`` (its normaliser,
all ones for the unnormalised estimators, the importance weights for the self-normalised ones).
The bootstrap draws ``n`` decisions with replacement, the same draws for every estimator with the
same seed (so intervals of different policies on one log are paired), and reports the percentile
interval (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from engine.errors import InvalidRequest
from engine.ope.data import BanditFeedback

_CELLS_PER_CHUNK = 4_000_000


@dataclass(frozen=True, slots=True)
class Estimate:
    """A policy value with its bootstrap interval and the effective sample size of its weights."""

    value: float
    ci_low: float
    ci_high: float
    ess: float
    n: int


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """``n_resamples`` resamples of the decisions, a two-sided ``confidence`` interval, a ``seed``."""

    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        if self.n_resamples < 2:
            raise InvalidRequest("n_resamples", f"must be at least 2, got {self.n_resamples}")
        if not 0 < self.confidence < 1:
            raise InvalidRequest("confidence", f"must be within (0, 1), got {self.confidence}")


class Terms(NamedTuple):
    """Per-decision terms ``d``, ``a`` and ``b`` of ``V = mean(d) + sum(a) / sum(b)``; ``None`` is absent."""

    direct: np.ndarray | None
    weighted: np.ndarray
    normaliser: np.ndarray | None


class Estimator(ABC):
    name = "estimator"

    @abstractmethod
    def terms(self, feedback: BanditFeedback) -> Terms: ...

    def effective_sample_size(self, feedback: BanditFeedback) -> float:
        """Kish's effective sample size of the importance weights, ``(sum w)^2 / sum w^2``."""
        return kish_ess(self.weights(feedback))

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        return feedback.weight

    def estimate(self, feedback: BanditFeedback, bootstrap: Bootstrap = Bootstrap()) -> Estimate:
        bootstrap.validate()
        terms = self.terms(feedback)
        value = _value(terms, feedback.n)
        low, high = _percentile_interval(terms, feedback.n, bootstrap)
        return Estimate(value, low, high, self.effective_sample_size(feedback), feedback.n)


@dataclass(frozen=True)
class WeightedEstimator(Estimator):
    """An estimator of importance weights clipped at ``clip``: ``min(w, clip)``.

    ``clip=None`` keeps the weights whole (and IPS and DR unbiased).
    """

    clip: float | None = None

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        w = feedback.weight
        if self.clip is None:
            return w
        if not self.clip > 0:
            raise InvalidRequest("clip", f"must be > 0, got {self.clip}")
        return np.minimum(w, self.clip)


def kish_ess(w: np.ndarray) -> float:
    squares = float(np.dot(w, w))
    return float(w.sum()) ** 2 / squares if squares > 0 else 0.0


def by_slot(estimator: Estimator, feedback: BanditFeedback, bootstrap: Bootstrap = Bootstrap()) -> dict[int, Estimate]:
    """One estimate per slot of a multi-slot log, keyed by slot."""
    assert feedback.slot is not None
    return {
        int(slot): estimator.estimate(feedback.subset(feedback.slot == slot), bootstrap)
        for slot in np.unique(feedback.slot)
    }


def _value(terms: Terms, n: int) -> float:
    direct = 0.0 if terms.direct is None else float(terms.direct.sum()) / n
    if terms.normaliser is None:
        return direct + float(terms.weighted.sum()) / n
    total = float(terms.normaliser.sum())
    return direct + (float(terms.weighted.sum()) / total if total > 0 else 0.0)


def _percentile_interval(terms: Terms, n: int, bootstrap: Bootstrap) -> tuple[float, float]:
    rng = np.random.default_rng(bootstrap.seed)
    values = []
    remaining = bootstrap.n_resamples
    chunk = max(1, _CELLS_PER_CHUNK // n)
    while remaining:
        size = min(chunk, remaining)
        remaining -= size
        draws = rng.integers(0, n, size=(size, n)) + (np.arange(size) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n).astype(float)
        values.append(_resampled_values(terms, counts, n))
    alpha = 1.0 - bootstrap.confidence
    low, high = np.quantile(np.concatenate(values), [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _resampled_values(terms: Terms, counts: np.ndarray, n: int) -> np.ndarray:
    value = counts @ terms.weighted
    if terms.normaliser is None:
        value = value / n
    else:
        total = counts @ terms.normaliser
        value = np.divide(value, total, out=np.zeros_like(value), where=total > 0)
    if terms.direct is not None:
        value = value + counts @ terms.direct / n
    return value
