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

from engine.ope.base import Terms, WeightedEstimator
from engine.ope.data import BanditFeedback


@dataclass(frozen=True)
class IPS(WeightedEstimator):
    name = "ips"

    def terms(self, feedback: BanditFeedback) -> Terms:
        return Terms(None, self.weights(feedback) * feedback.reward, None)


@dataclass(frozen=True)
class SNIPS(WeightedEstimator):
    name = "snips"

    def terms(self, feedback: BanditFeedback) -> Terms:
        w = self.weights(feedback)
        return Terms(None, w * feedback.reward, w)
