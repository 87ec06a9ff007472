"""The direct method (DM) and a ridge-regression reward model to feed it.

    DM = 1/n * sum_i sum_a pi(a | x_i) q(x_i, a)

where ``q`` is a reward model's prediction for every candidate ``a`` of decision ``i``. DM has no
importance weights (its ``ess`` is ``n``) and is as good as ``q``: biased when ``q`` is. Its
bootstrap interval is conditional on ``q`` (the predictions are held fixed while the decisions are
resampled), so it leaves out the reward model's own error and is narrower than DM's real
uncertainty; compare policies by DR or SNDR when the interval matters. Reference:
Dudík, Langford & Li, "Doubly Robust Policy Evaluation and Learning", ICML 2011, section 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import InvalidRequest
from engine.ope.base import Estimator, Terms
from engine.ope.data import BanditFeedback


@dataclass(frozen=True)
class DirectMethod(Estimator):
    name = "dm"

    def terms(self, feedback: BanditFeedback) -> Terms:
        feedback.require("DM", "target_pmf", "reward_prediction")
        direct = np.einsum("ik,ik->i", feedback.target_pmf, feedback.reward_prediction)
        return Terms(direct, np.zeros(feedback.n), None)

    def effective_sample_size(self, feedback: BanditFeedback) -> float:
        return float(feedback.n)


@dataclass(frozen=True)
class RidgeRewardModel:
    """Ridge regression ``q(z) = z . coef_ + intercept_`` on per-(context, action) feature rows ``z``.

    ``fit(features (m, d), reward (m,))`` minimises ``|y - Z coef - b|^2 + alpha |coef|^2`` (the
    intercept is not penalised); ``predict`` takes any array whose last axis has ``d`` features, for
    example ``(n, k, d)`` for every candidate of every decision, and returns its leading shape.
    """

    alpha: float = 1.0

    def fit(self, features: np.ndarray, reward: np.ndarray) -> FittedRidge:
        z = np.asarray(features, dtype=float)
        y = np.asarray(reward, dtype=float)
        if not self.alpha >= 0:
            raise InvalidRequest("alpha", f"must be >= 0, got {self.alpha}")
        if z.ndim != 2 or not np.isfinite(z).all():
            raise InvalidRequest("features", f"must be a finite (m, d) matrix, got shape {z.shape}")
        if y.shape != (z.shape[0],) or not np.isfinite(y).all():
            raise InvalidRequest("reward", f"must be finite with shape ({z.shape[0]},), got {y.shape}")
        z_mean, y_mean = z.mean(axis=0), y.mean()
        zc = z - z_mean
        gram = zc.T @ zc + self.alpha * np.eye(z.shape[1])
        coef = np.linalg.lstsq(gram, zc.T @ (y - y_mean), rcond=None)[0]
        return FittedRidge(coef, float(y_mean - z_mean @ coef))


@dataclass(frozen=True)
class FittedRidge:
    coef_: np.ndarray
    intercept_: float

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = np.asarray(features, dtype=float)
        if z.shape[-1] != self.coef_.shape[0]:
            raise InvalidRequest("features", f"last axis must have {self.coef_.shape[0]} features, got {z.shape}")
        return z @ self.coef_ + self.intercept_
