"""When a reward becomes final: the reward window, the default reward and the aggregation.

Each slot of each event is learned exactly once, when its reward is final:

* ``earliest`` — at the first reward for the slot's item; later ones are logged, not learned;
* ``sum`` — when the window closes, with the sum of the item's rewards;
* either way, a slot with no reward when the window closes gets ``default_reward``.

A deferred event is learnable only once activated; one never activated is never learned. The
window runs from the decision's time, so an event activated after it closed is too late.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

from engine.errors import ConfigurationError


class Aggregation(enum.Enum):
    EARLIEST = "earliest"
    SUM = "sum"


@dataclass(frozen=True, slots=True)
class RewardRules:
    window_seconds: float = 600.0
    default_reward: float = 0.0
    aggregation: Aggregation = Aggregation.EARLIEST

    def validate(self) -> None:
        if not (math.isfinite(self.window_seconds) and self.window_seconds > 0):
            raise ConfigurationError("reward_window", f"must be a positive duration, got {self.window_seconds}")
        if not math.isfinite(self.default_reward):
            raise ConfigurationError("default_reward", f"must be finite, got {self.default_reward}")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"45s"``, ``"10m"``, ``"2h"``, ``"7d"`` or ``"500ms"``."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigurationError("reward_window", f"not a duration like 30s, 10m, 2h or 7d: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]
