"""Doubly robust (DR) and self-normalised doubly robust (SNDR) estimation.

With the reward model's value of the target policy ``dm_i = sum_a pi(a | x_i) q(x_i, a)``, its
prediction for the logged action ``q_i = q(x_i, a_i)`` and importance weights ``w_i`` (clipped at
``clip`` when given):

    DR   = 1/n * sum_i [dm_i + w_i (r_i - q_i)]
    SNDR = 1/n * sum_i dm_i + sum_i w_i (r_i - q_i) / sum_i w_i

DR is unbiased when either the weights or the reward model are right, and its variance shrinks
as ``q`` improves. References: Dudík, Langford & Li, ICML 2011; Kallus & Uehara, "Intrinsically
efficient, stable, and bounded off-policy evaluation", NeurIPS 2019 (self-normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.ope.base import Estimator, Terms, clipped_weight
from engine.ope.data import BanditFeedback


def _dr_parts(name: str, feedback: BanditFeedback, clip: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feedback.require(name, "target_pmf", "reward_prediction", "action")
    rows = np.arange(feedback.n)
    direct = np.einsum("ik,ik->i", feedback.target_pmf, feedback.reward_prediction)
    residual = feedback.reward - feedback.reward_prediction[rows, feedback.action]  # type: ignore[index]
    return direct, clipped_weight(feedback, clip), residual


@dataclass(frozen=True)
class DoublyRobust(Estimator):
    clip: float | None = None
    name = "dr"

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        return clipped_weight(feedback, self.clip)

    def terms(self, feedback: BanditFeedback) -> Terms:
        direct, w, residual = _dr_parts("DR", feedback, self.clip)
        return Terms(direct, w * residual, None)


@dataclass(frozen=True)
class SelfNormalizedDoublyRobust(Estimator):
    clip: float | None = None
    name = "sndr"

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        return clipped_weight(feedback, self.clip)

    def terms(self, feedback: BanditFeedback) -> Terms:
        direct, w, residual = _dr_parts("SNDR", feedback, self.clip)
        return Terms(direct, w * residual, w)
