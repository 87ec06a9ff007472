"""The arrays an off-policy estimator reads, checked once, with errors that name the argument."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from engine.errors import InvalidRequest

_PMF_TOLERANCE = 1e-5


@dataclass(frozen=True)
class BanditFeedback:
    """A logged bandit dataset of ``n`` decisions and what a target policy would have done.

    Parameters
    ----------
    reward : (n,) float
        The reward observed for the logged action.
    propensity : (n,) float in (0, 1]
        The logging policy's probability of the logged action.
    target_probability : (n,) float in [0, 1], optional
        The target policy's probability of the logged action. Taken from
        ``target_pmf[i, action[i]]`` when omitted.
    action : (n,) int, optional
        Index of the logged action among the decision's candidates (a column of ``target_pmf``).
    target_pmf : (n, k) float, optional
        The target policy's distribution over each decision's candidates. Decisions with fewer
        than ``k`` candidates are padded with zeros.
    reward_prediction : (n, k) float, optional
        A reward model's prediction for every candidate of every decision (padding: any number).
    slot : (n,) int >= 0, optional
        The slot the decision filled; zero for single-slot logs.
    """

    reward: np.ndarray
    propensity: np.ndarray
    target_probability: np.ndarray | None = None
    action: np.ndarray | None = None
    target_pmf: np.ndarray | None = None
    reward_prediction: np.ndarray | None = None
    slot: np.ndarray | None = None

    def __post_init__(self) -> None:
        reward = _vector("reward", self.reward)
        n = reward.shape[0]
        if n == 0:
            raise InvalidRequest("reward", "must hold at least one decision")
        propensity = _vector("propensity", self.propensity, n)
        _within("propensity", propensity, low_open=True)
        action = None if self.action is None else _indices("action", self.action, n)
        pmf = prediction = None
        if self.target_pmf is not None:
            pmf = _matrix("target_pmf", self.target_pmf, n)
            _within("target_pmf", pmf, low_open=False)
            sums = pmf.sum(axis=1)
            bad = np.flatnonzero(np.abs(sums - 1.0) > _PMF_TOLERANCE)
            if bad.size:
                raise InvalidRequest("target_pmf", f"row {bad[0]} sums to {float(sums[bad[0]])!r}, not 1")
            if action is not None and action.max() >= pmf.shape[1]:
                raise InvalidRequest("action", f"indices must be below target_pmf's {pmf.shape[1]} columns")
        if self.reward_prediction is not None:
            prediction = _matrix("reward_prediction", self.reward_prediction, n)
            if pmf is not None and prediction.shape != pmf.shape:
                raise InvalidRequest(
                    "reward_prediction", f"shape {prediction.shape} differs from target_pmf's {pmf.shape}"
                )
        target = self._target_probability(n, pmf, action)
        slot = np.zeros(n, dtype=np.int64) if self.slot is None else _indices("slot", self.slot, n)
        for name, value in (("reward", reward), ("propensity", propensity), ("target_probability", target),
                            ("action", action), ("target_pmf", pmf), ("reward_prediction", prediction),
                            ("slot", slot)):
            object.__setattr__(self, name, value)

    def _target_probability(self, n: int, pmf: np.ndarray | None, action: np.ndarray | None) -> np.ndarray:
        from_pmf = None if pmf is None or action is None else pmf[np.arange(n), action]
        if self.target_probability is None:
            if from_pmf is None:
                raise InvalidRequest("target_probability", "required unless target_pmf and action are given")
            return from_pmf
        target = _vector("target_probability", self.target_probability, n)
        _within("target_probability", target, low_open=False)
        if from_pmf is not None:
            bad = np.flatnonzero(np.abs(from_pmf - target) > _PMF_TOLERANCE)
            if bad.size:
                raise InvalidRequest(
                    "target_probability", f"row {bad[0]} is {float(target[bad[0]])!r} but target_pmf gives {float(from_pmf[bad[0]])!r}"
                )
        return target

    @property
    def n(self) -> int:
        return int(self.reward.shape[0])

    @property
    def weight(self) -> np.ndarray:
        """Importance weights ``w_i = target_probability_i / propensity_i``."""
        return self.target_probability / self.propensity  # type: ignore[operator]

    def require(self, estimator: str, *names: str) -> None:
        for name in names:
            if getattr(self, name) is None:
                raise InvalidRequest(name, f"required by {estimator}")

    def subset(self, mask: np.ndarray) -> BanditFeedback:
        """The decisions where ``mask`` is true (for per-slot evaluation)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return BanditFeedback(**{k: None if v is None else v[mask] for k, v in values.items()})


def _vector(name: str, value: object, n: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim != 1:
        raise InvalidRequest(name, f"must be one-dimensional, got shape {array.shape}")
    if n is not None and array.shape[0] != n:
        raise InvalidRequest(name, f"has {array.shape[0]} entries, reward has {n}")
    _finite(name, array)
    return array


def _matrix(name: str, value: object, n: int) -> np.ndarray:
    array = np.asarray(value, dtype=float)
    if array.ndim != 2 or array.shape[0] != n or array.shape[1] == 0:
        raise InvalidRequest(name, f"must have shape (n, k) with n = {n} and k >= 1, got {array.shape}")
    _finite(name, array)
    return array


def _indices(name: str, value: object, n: int) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != n:
        raise InvalidRequest(name, f"must have shape ({n},), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise InvalidRequest(name, f"must hold integers, got {array.dtype}")
    if array.min() < 0:
        raise InvalidRequest(name, f"must be >= 0, got {array.min()} at index {int(np.argmin(array))}")
    return array.astype(np.int64)


def _finite(name: str, array: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(array.ravel()))
    if bad.size:
        index = np.unravel_index(bad[0], array.shape)
        raise InvalidRequest(name, f"must be finite, got {float(array[index])!r} at index {tuple(int(i) for i in index)}")


def _within(name: str, array: np.ndarray, *, low_open: bool) -> None:
    bad = (array <= 0) | (array > 1) if low_open else (array < 0) | (array > 1)
    if bad.any():
        index = np.unravel_index(np.flatnonzero(bad.ravel())[0], array.shape)
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise InvalidRequest(name, f"must be within {interval}, got {float(array[index])!r} at index {tuple(int(i) for i in index)}")
