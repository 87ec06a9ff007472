"""The Vowpal Wabbit contextual bandit (``cb_explore_adf``): the only code that speaks VW.

A decision is one multi-line VW example: a ``shared`` line with the user's features (namespace
``User``) and the request context (``Context``), then one line per candidate with its features
(``Item``, including the item's id). With portraits on, the shared line also carries the user's
portrait (``Portrait``, :mod:`engine.portraits`). Interactions are VW ``-q`` pairs of namespace
initials, by default ``UI`` (user × item) and ``CI`` (context × item), and ``PI`` (portrait × item)
with portraits on, so the learned score of an item depends on who asks, where, and their history.
VW returns a pmf over the candidates; :mod:`engine.exploration` draws from it.

Learning uses VW's cost convention: cost = −reward on the chosen line, labelled
``0:cost:probability``, the probability being the one the choice was made with.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.cache import BoundedCache
from engine.errors import ConfigurationError
from engine.exploration import normalised
from engine.types import Features

if TYPE_CHECKING:
    from engine.records import LoggedDecision

# Each algorithm's VW flag for its parameter, and the parameter's default (VW's own). A squarecb that
# explores less (a larger γ scale) or learns faster (a larger learning rate) earns more of the oracle on
# the quality benchmark, but leaves a log with less exploration to evaluate other policies with: the
# defaults keep the log worth evaluating (README, "Learning quality", has both measured).
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


EXAMPLE_FORMAT = 2
"""The layout of the lines a model learns from, kept with every checkpoint and snapshot: a model
learned from another layout would find few of its weights. 1: the item id inside ``Item`` and the
clock crossed; 2: the id in ``Key`` and ``hour``/``weekday`` in ``Time``, outside the pairs."""


NAMESPACES = {"U": "User", "C": "Context", "T": "Time", "P": "Portrait", "I": "Item", "K": "Key"}
"""The namespaces an interaction may pair, by the initial ``-q`` names them with (``Affinity`` is never crossed)."""


MAX_POLICIES = 64
"""The most policies ``cover`` or ``bag`` may keep: each is a whole model in memory and in every decision."""


@dataclass(frozen=True, slots=True)
class BanditConfig:
    """A policy's hyper-parameters: exploration, interactions and learning rate.

    ``exploration_parameter`` of ``None`` takes the algorithm's default from
    :data:`EXPLORATION_PARAMETERS`; for ``cover`` and ``bag`` it is the number of policies.
    """

    exploration: str = "squarecb"
    exploration_parameter: float | None = None
    interactions: tuple[str, ...] = ("UI", "CI", "PI")  # PI: nothing without a Portrait namespace (portraits off)
    learning_rate: float = 0.5
    bits: int = 18
    reward_range: tuple[float, float] = (0.0, 1.0)  # regcb's confidence bounds assume it

    @property
    def parameter(self) -> float:
        if self.exploration_parameter is not None:
            return self.exploration_parameter
        return EXPLORATION_PARAMETERS[self.exploration][1]

    @classmethod
    def from_dict(cls, values: dict) -> BanditConfig:  # type: ignore[type-arg]
        """The inverse of ``dataclasses.asdict`` after a JSON round trip (lists back to tuples)."""
        tuples = {k: tuple(v) for k, v in values.items() if isinstance(v, list)}
        return cls(**{**values, **tuples})

    def validate(self) -> None:
        if self.exploration not in EXPLORATION_PARAMETERS:
            raise ConfigurationError("exploration", f"must be one of {', '.join(EXPLORATION_PARAMETERS)}")
        p = self.parameter
        if not math.isfinite(p) or p < 0 or (self.exploration == "epsilon" and p > 1):
            raise ConfigurationError("exploration_parameter", f"out of range for {self.exploration}: {p}")
        if self.exploration in ("cover", "bag") and (p < 1 or p != int(p) or p > MAX_POLICIES):
            raise ConfigurationError("exploration_parameter",
                                     f"{self.exploration} needs a whole number from 1 to {MAX_POLICIES}, got {p:g}")
        for pair in self.interactions:
            if len(pair) != 2 or not set(pair) <= set(NAMESPACES):
                raise ConfigurationError("interactions", f"{pair!r}: pairs of " + ", ".join(
                    f"{initial} ({name.lower()})" for initial, name in NAMESPACES.items()))
        if not 0 < self.learning_rate <= 10:
            raise ConfigurationError("learning_rate", f"must be within (0, 10], got {self.learning_rate}")
        low, high = self.reward_range
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigurationError("reward_range", f"must be finite with low < high, got {self.reward_range}")

    def vw_arguments(self) -> str:
        self.validate()
        flag, _ = EXPLORATION_PARAMETERS[self.exploration]
        value = int(self.parameter) if self.exploration in ("cover", "bag") else self.parameter
        parts = ["--cb_explore_adf", flag, str(value), _ALGORITHM_FLAGS[self.exploration]]
        parts += [f"-q {pair}" for pair in self.interactions]
        if self.exploration == "regcbopt":  # VW's cost is -reward, so the cost range is flipped
            parts += [f"--cb_min_cost {-self.reward_range[1]!r}", f"--cb_max_cost {-self.reward_range[0]!r}"]
        parts += [f"--learning_rate {self.learning_rate}", f"-b {self.bits}", "--quiet"]
        return " ".join(p for p in parts if p)


def labelled_lines(shared: str, actions: Sequence[str], chosen: int, reward: float, probability: float) -> list[str]:
    """The example VW learns: the chosen line carries ``0:cost:probability``, cost = −reward."""
    lines = [shared, *actions]
    lines[chosen + 1] = f"0:{-reward!r}:{probability!r} {actions[chosen]}"
    return lines


def shared_line(user_features: Features, context: Features, portrait: Features | None = None) -> str:
    """The shared line: namespaces ``User``, ``Context`` and, when the user has one, ``Portrait``
    (:mod:`engine.portraits`; ``-q PI`` crosses it with the item)."""
    line = f"shared |User {_encode(user_features)} |Context {_encode(context)}"
    if FINE_CLOCK & context.keys():
        coarse = {n: v for n, v in context.items() if n not in FINE_CLOCK}
        fine = {n: v for n, v in context.items() if n in FINE_CLOCK}
        line = f"shared |User {_encode(user_features)} |Context {_encode(coarse)} |Time {_encode(fine)}"
    return f"{line} |Portrait {_encode(portrait)}" if portrait else line


FINE_CLOCK = frozenset({"hour", "weekday"})
"""Context features read on the fine clock, which go to namespace ``Time``, outside the ``-q``
pairs: each gets a weight of its own, and its coarse form (``daypart``, ``weekend``:
:func:`engine.features.with_time_context`) is what the bandit crosses with the item. Crossing
24 hours and 7 days with every item feature learns 31 weights where 6 carry the signal, and
the noise of the rest cost about 0.01 of the oracle on the quality benchmark (README)."""


def example_lines(user_features: Features, context: Features, candidates: Iterable[tuple[str, Features]],
                  portrait: Features | None = None) -> tuple[str, list[str]]:
    """The shared line and each candidate's line (``(item_id, features)``) of one decision: what
    serving decided from, and what learning, replay, reports and explanations rebuild from the log."""
    return (shared_line(user_features, context, portrait),
            [action_line(item_id, features) for item_id, features in candidates])


def decision_lines(decision: LoggedDecision) -> tuple[str, list[str]]:
    """:func:`example_lines` of a logged decision: the example it was decided from, every candidate's line."""
    return example_lines(decision.user_features, decision.context,
                         ((c.item_id, c.features) for c in decision.candidates), decision.portrait)


def regression_line(shared: str, action: str, label: str = "") -> str:
    """One (context, item) row for a reward regression: the shared namespaces and the item's on one
    line, ``label`` (``"<reward> "``) first."""
    return f"{label}{shared.removeprefix('shared ')} {action}"


def with_affinity(line: str, affinity: Features) -> str:
    """A candidate's cached :func:`action_line` extended by this request's affinity (see :func:`affinity_segment`)."""
    return f"{line} {affinity_segment(affinity)}"


def action_line(item_id: str, features: Features) -> str:
    """The candidate's line: its id in namespace ``Key``, its features in ``Item``, and its
    ``lightfm_*`` features in ``Affinity``.

    The id is a feature of its own, outside the ``-q`` pairs (``K`` crosses it where an operator
    wants to): a weight per item learns how good the item is for everyone, and the pairs learn
    what its attributes mean to whom. Crossing the id with every user and context feature as well
    learns thousands of weights per item that the attribute pairs already stand for; on the
    quality benchmark it cost about 0.01 of the oracle (README, "Learning quality").

    The LightFM affinity of this user and item is per request, so it sits in a namespace of its
    own, outside the ``-q`` interactions: the bandit learns one weight per affinity feature.
    """
    key = f"|Key id={item_id.translate(_TEXT_ESCAPES)}"
    if not any(name.startswith(AFFINITY_PREFIX) for name in features):
        return f"{key} |Item {_encode(features)}"
    item = {n: v for n, v in features.items() if not n.startswith(AFFINITY_PREFIX)}
    affinity = {n: v for n, v in features.items() if n.startswith(AFFINITY_PREFIX)}
    return f"{key} |Item {_encode(item)} {affinity_segment(affinity)}"


AFFINITY_PREFIX = "lightfm_"


def affinity_segment(affinity: Features) -> str:
    """The ``Affinity`` namespace of numeric per-request features, appended to a candidate's line.

    ``action_line(i, {**features, **affinity}) == action_line(i, features) + " " + affinity_segment(affinity)``
    when ``features`` has no ``lightfm_*`` name, so a cached line can be extended per request. The
    tokens skip the token cache: these numbers hardly repeat.
    """
    return "|Affinity " + " ".join(_token(name, value) for name, value in affinity.items())


_tokens: BoundedCache[tuple[object, ...], str] = BoundedCache(max_entries=1 << 16, max_bytes=32 << 20)


def _encode(features: Features) -> str:
    """VW text of ``features``; the token of each (name, value) pair is computed once and reused."""
    tokens = _tokens
    out = []
    for name, value in features.items():
        # bool is a subclass of int and True == 1.0: the type is part of the key except for strings
        key = (name, value) if value.__class__ is str else (name, value.__class__, value)
        token = tokens.get(key)
        if token is None:
            token = _token(name, value)
            tokens.put(key, token, 3 * len(token))  # the key holds the name and value again
        out.append(token)
    return " ".join(out)


def _token(name: str, value: object) -> str:
    name = name.translate(_TEXT_ESCAPES)
    if isinstance(value, bool):
        return f"{name}={'true' if value else 'false'}"
    if isinstance(value, float | int):
        return f"{name}:{value!r}"
    if isinstance(value, str):
        return f"{name}={value.translate(_TEXT_ESCAPES)}"
    return " ".join(f"{name}={v.translate(_TEXT_ESCAPES)}" for v in value)  # type: ignore[attr-defined]


WEIGHTS_PER_LOCK = 4096
"""Weights read per hold of the workspace's lock by :meth:`VWBandit.weights` (about 2 ms)."""


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
        native = vowpalwabbit.pyvw.pylibvw.vw
        self._parse, self._finish = native._parse, native._finish_example_multi_ex
        self._predict_multi, self._learn_multi = native.predict_multi, native.learn_multi

    @property
    def arguments(self) -> str:
        """The argument string of the live workspace (a loaded model keeps its own)."""
        arguments = self._vw.get_arguments()
        return arguments.strip() if isinstance(arguments, str) else " ".join(arguments)

    def pmf(self, shared: str, actions: Sequence[str]) -> list[float]:
        """Probabilities over ``actions`` in input order: the :func:`~engine.exploration.normalised` :meth:`scores`."""
        return normalised(self.scores(shared, actions))

    def scores(self, shared: str, actions: Sequence[str]) -> list[float]:
        """VW's pmf over ``actions`` in input order, as it computed it (single precision, sum about 1)."""
        text = "\n".join((shared, *actions))
        with self._lock:
            return self._run(text, learn=False)

    def learn(self, shared: str, actions: Sequence[str], chosen: int, reward: float, probability: float) -> None:
        text = "\n".join(labelled_lines(shared, actions, chosen, reward, probability))
        with self._lock:
            self._run(text, learn=True)

    def _run(self, text: str, *, learn: bool) -> list[float]:
        """Parse one multi-line example, predict or learn, and hand the example back to VW.

        This is what ``Workspace.predict`` / ``learn`` do for a list of lines, without building
        a Python wrapper per line (a fifth of the cost). ``text`` has no carriage returns and no
        blank line (the encoders guarantee both), so VW parses it as one multi-line example.
        """
        examples = self._parse(self._vw, text)
        try:
            if learn:
                self._learn_multi(self._vw, examples)
                return []
            self._predict_multi(self._vw, examples)
            return examples[0].get_action_scores()
        finally:
            self._finish(self._vw, examples)

    def weights(self, indexes: Sequence[int]) -> list[float]:
        """The weights at VW's hashed ``indexes`` (as ``--audit`` prints them), under the lock a chunk
        at a time: a long read delays a decision by one chunk at most. The caller holds learning
        off if it needs them all from one moment."""
        get = self._vw.get_weight
        out: list[float] = []
        for start in range(0, len(indexes), WEIGHTS_PER_LOCK):
            with self._lock:
                out += [get(i) for i in indexes[start:start + WEIGHTS_PER_LOCK]]
        return out

    def save(self, path: str) -> None:
        with self._lock:
            self._vw.save(path)

    def close(self) -> None:
        with self._lock:
            self._vw.finish()
