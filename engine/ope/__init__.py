"""Off-policy estimators: how a target policy would have done on a log another policy wrote.

Pure numpy. Each estimator is a small frozen dataclass whose ``estimate(feedback, bootstrap)``
returns an :class:`Estimate` (value, bootstrap interval, effective sample size, n). Multi-slot
logs are evaluated per slot with :func:`by_slot`.
"""

from engine.ope.base import Bootstrap, Estimate, Estimator, by_slot
from engine.ope.data import BanditFeedback
from engine.ope.dm import DirectMethod, RidgeRewardModel
from engine.ope.dr import DoublyRobust, SelfNormalizedDoublyRobust
from engine.ope.ipw import IPS, SNIPS

ESTIMATORS: dict[str, type[Estimator]] = {
    "ips": IPS,
    "snips": SNIPS,
    "dm": DirectMethod,
    "dr": DoublyRobust,
    "sndr": SelfNormalizedDoublyRobust,
}

__all__ = [
    "ESTIMATORS",
    "IPS",
    "SNIPS",
    "BanditFeedback",
    "Bootstrap",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "Estimator",
    "RidgeRewardModel",
    "SelfNormalizedDoublyRobust",
    "by_slot",
]
