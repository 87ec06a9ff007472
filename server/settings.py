"""Server settings: defaults, overridden by ``RECBANDIT_*`` environment variables, then CLI flags.

Configuration enters here and only here; the engine receives a frozen :class:`EngineConfig`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.bandit import BanditConfig
from engine.core import EngineConfig
from engine.errors import InvalidRequest
from engine.privacy import read_key
from engine.rewards import Aggregation, RewardRules, parse_duration
from engine.validation import Limits

ENV_PREFIX = "RECBANDIT_"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 50051
    data_dir: str = "recbandit-data"
    exploration: str = "squarecb"
    exploration_parameter: float | None = None
    interactions: str = "UI,CI"
    learning_rate: float = 0.5
    reward_window: str = "10m"
    default_reward: float = 0.0
    reward_aggregation: str = "earliest"
    min_reward: float = -1e6
    max_reward: float = 1e6
    reward_range: str = "0,1"
    max_candidates: int = 500
    seed: int = 0
    checkpoint_interval: float = 60.0
    workers: int = 16
    grace: float = 5.0
    reflection: bool = True
    retrieval_top_n: int = 100
    embeddings_poll_interval: float = 5.0
    policy_registry: str = ""
    policy_poll_interval: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    allow_insecure: bool = False
    auth_tokens: str = ""
    max_in_flight: int = 256
    max_request_bytes: int = 1 << 20
    pseudonymize_user_ids: str = ""
    reuse_port: bool = False
    log_format: str = "text"
    access_log: bool = True
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``RECBANDIT_<FIELD>`` variables, then ``overrides`` that are not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw, cls.__annotations__[f.name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def engine_config(self) -> EngineConfig:
        self._check_ranges()
        reward_range = _reward_range(self.reward_range)
        low, high = reward_range
        if self.exploration == "regcbopt" and not low <= self.default_reward <= high:
            raise InvalidRequest(
                "default_reward", f"{self.default_reward:g} lies outside reward_range [{low:g}, {high:g}], "
                "the range regcbopt assumes; change one of the two settings"
            )
        return EngineConfig(
            data_dir=Path(self.data_dir),
            bandit=BanditConfig(
                exploration=self.exploration,
                exploration_parameter=self.exploration_parameter,
                interactions=tuple(p.strip() for p in self.interactions.split(",") if p.strip()),
                learning_rate=self.learning_rate,
                reward_range=reward_range,
            ),
            rewards=RewardRules(
                window_seconds=parse_duration(self.reward_window),
                default_reward=self.default_reward,
                aggregation=_aggregation(self.reward_aggregation),
            ),
            limits=dataclasses.replace(
                Limits(), min_reward=self.min_reward, max_reward=self.max_reward, max_candidates=self.max_candidates
            ),
            seed=self.seed,
            checkpoint_interval=self.checkpoint_interval,
            retrieval_top_n=self.retrieval_top_n,
            embeddings_poll_interval=self.embeddings_poll_interval,
            user_id_key=read_key(self.pseudonymize_user_ids) if self.pseudonymize_user_ids else None,
        )

    def _check_ranges(self) -> None:
        """Every number within the range where it means something; a data directory named."""
        if not self.data_dir.strip():
            raise InvalidRequest("data_dir", "must name a directory")
        at_least = {"max_candidates": 1, "retrieval_top_n": 1, "workers": 1, "grace": 0.0,
                    "embeddings_poll_interval": 0.0}
        for name, low in at_least.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= low):
                raise InvalidRequest(name, f"must be at least {low:g}, got {value:g}")
        if not (math.isfinite(self.checkpoint_interval) and self.checkpoint_interval > 0):
            raise InvalidRequest("checkpoint_interval", f"must be a number of seconds above 0, got {self.checkpoint_interval:g}")
        if not math.isfinite(self.policy_poll_interval):
            raise InvalidRequest("policy_poll_interval", f"must be finite (0 or less: only on ReloadPolicy), got {self.policy_poll_interval:g}")
        if not (math.isfinite(self.min_reward) and math.isfinite(self.max_reward) and self.min_reward < self.max_reward):
            raise InvalidRequest("min_reward", f"min_reward and max_reward must be finite with min_reward < max_reward, "
                                 f"got {self.min_reward:g} and {self.max_reward:g}")

    def reward_range_warning(self) -> str | None:
        """Why regcbopt may see rewards outside ``reward_range``, or None.

        Feedback accepts ``[min_reward, max_reward]`` and the learner is given what was reported,
        never a clipped value; with ``sum`` the learned reward is a sum of reported rewards.
        """
        if self.exploration != "regcbopt":
            return None
        low, high = _reward_range(self.reward_range)
        reasons = []
        if self.min_reward < low or self.max_reward > high:
            reasons.append(f"Feedback accepts [{self.min_reward:g}, {self.max_reward:g}] (min_reward, max_reward)")
        if self.reward_aggregation == Aggregation.SUM.value:
            reasons.append("reward_aggregation=sum learns the sum of a slot's rewards")
        if not reasons:
            return None
        return (f"regcbopt assumes rewards within reward_range [{low:g}, {high:g}], but {' and '.join(reasons)}; "
                "rewards outside it are learned as reported, not clipped, against regcb's assumption")


def _aggregation(value: str) -> Aggregation:
    try:
        return Aggregation(value)
    except ValueError:
        choices = ", ".join(a.value for a in Aggregation)
        raise InvalidRequest("reward_aggregation", f"must be one of {choices}, got {value!r}") from None


def _reward_range(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"``: two finite numbers with LOW < HIGH."""
    error = InvalidRequest("reward_range", f"must be LOW,HIGH: two finite numbers with LOW < HIGH, got {text!r}")
    try:
        low, high = map(float, text.split(","))
    except ValueError:  # not two parts, or not numbers
        raise error from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise error
    return low, high


def _parse(name: str, raw: str, annotation: str) -> Any:
    try:
        if annotation == "bool":
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if annotation == "int":
            return int(raw)
        if annotation.startswith("float"):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: cannot read {raw!r} as {annotation}") from None
