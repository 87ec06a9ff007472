"""The Vowpal Wabbit contextual bandit (``cb_explore_adf``): the only code that speaks VW.

A decision is one multi-line VW example: a ``shared`` line with the user's features (namespace
``User``) and the request context (``Context``), then one line per candidate with its features
(``Item``, including the item's id). Interactions are VW ``-q`` pairs of namespace initials, by
default ``UI`` (user × item) and ``CI`` (context × item), so the learned score of an item depends on
who asks and where. VW returns a pmf over the candidates; :mod:`engine.exploration` draws from it.

Learning uses VW's cost convention: cost = −reward on the chosen line, labelled
``0:cost:probability``, the probability being the one the choice was made with.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from engine.errors import InvalidRequest
from engine.types import Features

# Each algorithm's VW flag for its parameter, and the parameter's default.
EXPLORATION_PARAMETERS: dict[str, tuple[str, float]] = {
    "epsilon": ("--epsilon", 0.05),
    "softmax": ("--lambda", 10.0),
    "squarecb": ("--gamma_scale", 10.0),
    "regcbopt": ("--mellowness", 0.1),
    "cover": ("--cover", 4),
    "bag": ("--bag", 5),
}
_ALGORITHM_FLAGS = {
    "epsilon": "",
    "softmax": "--softmax",
    "squarecb": "--squarecb",
    "regcbopt": "--regcbopt",
    "cover": "--nounif",
    "bag": "",
}
_TEXT_ESCAPES = str.maketrans({" ": "_", "\t": "_", "\n": "_", "\r": "_", ":": ";", "|": "/"})


@dataclass(frozen=True, slots=True)
class BanditConfig:
    """A policy's hyper-parameters: exploration, interactions and learning rate.

    ``exploration_parameter`` of ``None`` takes the algorithm's default from
    :data:`EXPLORATION_PARAMETERS`; for ``cover`` and ``bag`` it is the number of policies.
    """

    exploration: str = "squarecb"
    exploration_parameter: float | None = None
    interactions: tuple[str, ...] = ("UI", "CI")
    learning_rate: float = 0.5
    bits: int = 18

    @property
    def parameter(self) -> float:
        if self.exploration_parameter is not None:
            return self.exploration_parameter
        return EXPLORATION_PARAMETERS[self.exploration][1]

    def validate(self) -> None:
        if self.exploration not in EXPLORATION_PARAMETERS:
            raise InvalidRequest("exploration", f"must be one of {', '.join(EXPLORATION_PARAMETERS)}")
        p = self.parameter
        if not math.isfinite(p) or p < 0 or (self.exploration == "epsilon" and p > 1):
            raise InvalidRequest("exploration_parameter", f"out of range for {self.exploration}: {p}")
        if self.exploration in ("cover", "bag") and (p < 1 or p != int(p)):
            raise InvalidRequest("exploration_parameter", f"{self.exploration} needs a whole number >= 1")
        for pair in self.interactions:
            if len(pair) != 2 or not set(pair) <= {"U", "C", "I"}:
                raise InvalidRequest("interactions", f"{pair!r}: pairs of U (user), C (context), I (item)")
        if not 0 < self.learning_rate <= 10:
            raise InvalidRequest("learning_rate", f"must be within (0, 10], got {self.learning_rate}")

    def vw_arguments(self) -> str:
        self.validate()
        flag, _ = EXPLORATION_PARAMETERS[self.exploration]
        value = int(self.parameter) if self.exploration in ("cover", "bag") else self.parameter
        parts = ["--cb_explore_adf", flag, str(value), _ALGORITHM_FLAGS[self.exploration]]
        parts += [f"-q {pair}" for pair in self.interactions]
        parts += [f"--learning_rate {self.learning_rate}", f"-b {self.bits}", "--quiet"]
        return " ".join(p for p in parts if p)


def shared_line(user_features: Features, context: Features) -> str:
    return f"shared |User {_encode(user_features)} |Context {_encode(context)}"


def action_line(item_id: str, features: Features) -> str:
    return f"|Item id={item_id.translate(_TEXT_ESCAPES)} {_encode(features)}"


def _encode(features: Features) -> str:
    tokens = []
    for name, value in features.items():
        name = name.translate(_TEXT_ESCAPES)
        if isinstance(value, bool):
            tokens.append(f"{name}={'true' if value else 'false'}")
        elif isinstance(value, float | int):
            tokens.append(f"{name}:{value!r}")
        elif isinstance(value, str):
            tokens.append(f"{name}={value.translate(_TEXT_ESCAPES)}")
        else:
            tokens.extend(f"{name}={v.translate(_TEXT_ESCAPES)}" for v in value)
    return " ".join(tokens)


class VWBandit:
    """A live VW workspace behind a lock (a workspace is not safe across threads)."""

    def __init__(self, config: BanditConfig, model_path: str | None = None) -> None:
        import vowpalwabbit  # heavy: only the code that needs VW loads it

        self.config = config
        arguments = config.vw_arguments()
        if model_path is not None:
            arguments = f"-i {model_path} --quiet"
        self._vw = vowpalwabbit.Workspace(arguments)
        self._lock = threading.Lock()

    @property
    def arguments(self) -> str:
        """The argument string of the live workspace (a loaded model keeps its own)."""
        arguments = self._vw.get_arguments()
        return arguments.strip() if isinstance(arguments, str) else " ".join(arguments)

    def pmf(self, shared: str, actions: Sequence[str]) -> list[float]:
        """Probabilities over ``actions`` in input order, normalised to sum to 1."""
        with self._lock:
            scores = self._vw.predict([shared, *actions])
        total = math.fsum(scores)
        if not total > 0:
            return [1.0 / len(actions)] * len(actions)
        return [s / total for s in scores]

    def learn(self, shared: str, actions: Sequence[str], chosen: int, reward: float, probability: float) -> None:
        lines = [shared, *actions]
        lines[chosen + 1] = f"0:{-reward!r}:{probability!r} {actions[chosen]}"
        with self._lock:
            self._vw.learn(lines)

    def save(self, path: str) -> None:
        with self._lock:
            self._vw.save(path)

    def close(self) -> None:
        with self._lock:
            self._vw.finish()
