"""Inverse propensity scoring (IPS) and its self-normalised form (SNIPS).

With importance weights ``w_i = pi(a_i | x_i) / mu(a_i | x_i)`` (target over logging probability
of the logged action ``a_i``), clipped at ``clip`` when given:

    IPS   = 1/n * sum_i w_i r_i
    SNIPS = sum_i w_i r_i / sum_i w_i

IPS is unbiased when ``mu > 0`` wherever ``pi > 0`` and no clipping is applied; SNIPS trades a
small bias for a much lower variance. References: Horvitz & Thompson (1952); Swaminathan &
Joachims, "The self-normalized estimator for counterfactual learning", NeurIPS 2015.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.ope.base import Estimator, Terms, clipped_weight
from engine.ope.data import BanditFeedback


@dataclass(frozen=True)
class IPS(Estimator):
    clip: float | None = None
    name = "ips"

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        return clipped_weight(feedback, self.clip)

    def terms(self, feedback: BanditFeedback) -> Terms:
        return Terms(None, self.weights(feedback) * feedback.reward, None)


@dataclass(frozen=True)
class SNIPS(Estimator):
    clip: float | None = None
    name = "snips"

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        return clipped_weight(feedback, self.clip)

    def terms(self, feedback: BanditFeedback) -> Terms:
        w = self.weights(feedback)
        return Terms(None, w * feedback.reward, w)
