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

from engine.ope.base import Terms, WeightedEstimator
from engine.ope.data import BanditFeedback


def _dr_parts(name: str, feedback: BanditFeedback) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the reward model's value of the target policy, and the logged action's residual."""
    feedback.require(name, "target_pmf", "reward_prediction", "action")
    rows = np.arange(feedback.n)
    direct = np.einsum("ik,ik->i", feedback.target_pmf, feedback.reward_prediction)
    residual = feedback.reward - feedback.reward_prediction[rows, feedback.action]  # type: ignore[index]
    return direct, residual


@dataclass(frozen=True)
class DoublyRobust(WeightedEstimator):
    name = "dr"

    def terms(self, feedback: BanditFeedback) -> Terms:
        direct, residual = _dr_parts("DR", feedback)
        return Terms(direct, self.weights(feedback) * residual, None)


@dataclass(frozen=True)
class SelfNormalizedDoublyRobust(WeightedEstimator):
    name = "sndr"

    def terms(self, feedback: BanditFeedback) -> Terms:
        direct, residual = _dr_parts("SNDR", feedback)
        w = self.weights(feedback)
        return Terms(direct, w * residual, w)
