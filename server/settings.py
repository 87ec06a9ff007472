"""Server settings: defaults, overridden by ``RECBANDIT_*`` environment variables, then CLI flags.

Configuration enters here and only here; the engine receives a frozen :class:`EngineConfig`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.bandit import BanditConfig
from engine.core import EngineConfig
from engine.errors import InvalidRequest
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
        return EngineConfig(
            data_dir=Path(self.data_dir),
            bandit=BanditConfig(
                exploration=self.exploration,
                exploration_parameter=self.exploration_parameter,
                interactions=tuple(p.strip() for p in self.interactions.split(",") if p.strip()),
                learning_rate=self.learning_rate,
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
        )


def _aggregation(value: str) -> Aggregation:
    try:
        return Aggregation(value)
    except ValueError:
        choices = ", ".join(a.value for a in Aggregation)
        raise InvalidRequest("reward_aggregation", f"must be one of {choices}, got {value!r}") from None


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
