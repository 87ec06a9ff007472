"""Why this item? The features behind an item's score in a logged decision, by VW's own audit.

With ``cb_explore_adf`` over a linear regressor, the score (expected cost) of item :math:`a` for
the shared features :math:`x` is

.. math::  s(x, a) = \\sum_j w_{h_j} \\, v_j ,

summed over the features :math:`j` of the item's example: the shared line's (``User``,
``Context``, VW's ``Constant``), the item's own (``Item``, ``Affinity``) and every ``-q`` pair
(``User×Item``, ``Context×Item``), whose value is the product of its parts' values.
:math:`h_j` is VW's hash of the feature and :math:`w` the weights. Feature :math:`j` contributes
:math:`c_j = w_{h_j} v_j`. VW scores costs (cost = −reward), so a negative contribution raises
the item's expected reward. With ``bag`` and ``cover`` the model holds several policies; the
first one's weights are the ones explained.

How, exactly and without re-implementing VW's hashing:

1. The example is rebuilt from the logged decision with the line builders the engine decided
   with (:func:`engine.bandit.shared_line`, :func:`engine.bandit.action_line`): the shared line
   and the item's line. The item's score does not depend on the other candidates.
2. VW audits it (``--audit``): every feature, interactions included, by name with its hash and
   value. The names, hashes and values depend on the model's arguments (bits, interactions,
   reduction stack), never on its weights, so the audit runs on a weightless workspace with the
   live model's arguments, in a child process: VW writes its audit to the process's standard
   output, which a server cannot take over safely, and a fault in VW stays out of the server.
   Audits are cached by (arguments, example).
3. The live model's weights at those hashes are read with learning held off (decisions go on),
   so the weights and the version that explain the item belong to one moment. The audit runs
   before, while learning goes on; a policy swapped in meanwhile is audited again.

Cost, measured through gRPC on a two-core machine: about 65 ms for an example not audited before
(the child process: interpreter, VW, a weightless workspace), 2-5 ms for a cached one. Learning
pauses only while the weights are read: microseconds for a typical example, about 1 ms per 2,500
features (read 4,096 per hold of the workspace's lock, so decisions wait 2 ms at most). Everything
is bounded by the request limits on features, and one child process runs at a time: another
explanation that needs one meanwhile is refused (``RESOURCE_EXHAUSTED``), never queued.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from engine.bandit import VWBandit, example_lines
from engine.cache import BoundedCache
from engine.errors import Busy, InvalidRequest, PreconditionFailed, UnknownCandidate, UnknownEvent
from engine.records import LoggedDecision
from engine.validation import Limits, check_id

DEFAULT_FEATURES = 10
MAX_FEATURES = 100
"""``max_features`` of 0 means :data:`DEFAULT_FEATURES`; more than :data:`MAX_FEATURES` is refused."""

MAX_AUDITED_FEATURES = 200_000
"""The most features (interactions included) an explanation audits: about 1.5 s of VW's audit."""
AUDIT_TIMEOUT = 30.0
"""Seconds the child process that audits one example may take."""

# The audit run by a child process: arguments on the first line of its input, the example after.
_AUDIT_PROGRAM = """
import sys
import pylibvw
arguments, example = sys.stdin.read().split("\\n", 1)
vw = pylibvw.vw(arguments.split())
examples = pylibvw.vw._parse(vw, example)
pylibvw.vw.predict_multi(vw, examples)
pylibvw.vw._finish_example_multi_ex(vw, examples)
vw.finish()
"""
# Options naming files: the audit must neither read the live model's file nor write any.
_FILE_OPTIONS = frozenset({
    "-i", "--initial_regressor", "-f", "--final_regressor", "--readable_model", "--invert_hash",
    "-d", "--data", "--cache_file", "-p", "--predictions", "-r", "--raw_predictions", "--audit_regressor",
})


@dataclass(frozen=True, slots=True)
class AuditedFeature:
    """One feature of an example as VW audits it: ``User^segment=vip*Item^category=shoes``, its
    hashed weight index, and its value (the product of its parts' values for an interaction)."""

    name: str
    index: int
    value: float


@dataclass(frozen=True, slots=True)
class FeatureContribution:
    feature: str
    value: float
    weight: float
    contribution: float  # value × weight


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why the decision ``event_id`` offered ``item_id``: its pmf then, its features' weights now."""

    event_id: str
    item_id: str
    slot: int  # the slot the item was chosen for; -1: a candidate not chosen (``pmf`` is slot 0's)
    model_version: str  # the version that decided, as logged
    pmf: tuple[tuple[str, float], ...]  # every candidate, in the request's order
    probability: float
    score: float  # the explaining model's expected cost of the item: the sum of all contributions
    explaining_model_version: str
    contributions: tuple[FeatureContribution, ...]  # the largest |contribution| first


def check_max_features(max_features: int) -> int:
    """How many contributions to return: 0 means :data:`DEFAULT_FEATURES`."""
    if not 0 <= max_features <= MAX_FEATURES:
        raise InvalidRequest("max_features", f"must be from 0 to {MAX_FEATURES} (0 means {DEFAULT_FEATURES}), "
                                             f"got {max_features}")
    return max_features or DEFAULT_FEATURES


ModelAtRest = Callable[[], AbstractContextManager[tuple[VWBandit, str]]]
"""The served model and its version, with no learning while the context lasts."""


class Explainer:
    """``explain(event_id, item_id, max_features)`` for the decisions of one log and the live model.

    Parameters
    ----------
    decisions:
        The logged decision of an event id, or None.
    live_model:
        The served model now.
    model_at_rest:
        Enters a context in which the served model does not learn; yields it and its version.
    limits:
        The request limits ids are checked against.
    """

    def __init__(self, decisions: Callable[[str], LoggedDecision | None], live_model: Callable[[], VWBandit],
                 model_at_rest: ModelAtRest, limits: Limits) -> None:
        self.decisions = decisions
        self.live_model = live_model
        self.model_at_rest = model_at_rest
        self.limits = limits
        self._audits: BoundedCache[tuple[str, str], tuple[AuditedFeature, ...]] = BoundedCache(
            max_entries=1024, max_bytes=16 << 20)
        self._audit_lock = threading.Lock()  # one child process at a time

    def explain(self, event_id: str, item_id: str = "", max_features: int = 0) -> Explanation:
        check_id("event_id", event_id, self.limits)
        check_id("item_id", item_id, self.limits, required=False)
        top = check_max_features(max_features)
        decision = self.decisions(event_id)
        if decision is None:
            raise UnknownEvent(event_id)
        item_id = item_id or decision.slots[0].item_id
        position = next((i for i, c in enumerate(decision.candidates) if c.item_id == item_id), None)
        if position is None:
            raise UnknownCandidate(event_id, item_id)
        slot = next((k for k, s in enumerate(decision.slots) if s.item_id == item_id), -1)
        pmf = decision.slots[max(slot, 0)].pmf
        shared, (action,) = example_lines(decision.user_features, decision.context,
                                          [(item_id, decision.candidates[position].features)], decision.portrait)
        check_audit_size(shared, action)
        text = f"{shared}\n{action}"
        features = self._audit(self.live_model().arguments, text)  # the child process runs while learning goes on
        with self.model_at_rest() as (bandit, version):
            if bandit.arguments != features.arguments:  # another policy was swapped in meanwhile
                features = self._audit(bandit.arguments, text)
            weights = bandit.weights([f.index for f in features.features])
        contributions = [FeatureContribution(f.name, f.value, w, f.value * w)
                         for f, w in zip(features.features, weights, strict=True)]
        ranked = sorted(contributions, key=lambda c: abs(c.contribution), reverse=True)
        return Explanation(
            event_id=event_id,
            item_id=item_id,
            slot=slot,
            model_version=decision.model_version,
            pmf=tuple((c.item_id, p) for c, p in zip(decision.candidates, pmf, strict=True)),
            probability=pmf[position],
            score=sum(c.contribution for c in contributions),
            explaining_model_version=version,
            contributions=tuple(ranked[:top]),
        )

    def _audit(self, arguments: str, text: str) -> _Audit:
        features = self._audits.get((arguments, text))
        if features is None:
            if not self._audit_lock.acquire(blocking=False):  # refused, not queued in the worker threads
                raise Busy("an explanation of an example not explained before")
            try:
                features = audit(arguments, text)
            finally:
                self._audit_lock.release()
            self._audits.put((arguments, text), features, 2 * len(text) + sum(64 + len(f.name) for f in features))
        return _Audit(arguments, features)


@dataclass(frozen=True, slots=True)
class _Audit:
    """An example's audited features and the model arguments they were audited under."""

    arguments: str
    features: tuple[AuditedFeature, ...]


def audit(arguments: str, text: str) -> tuple[AuditedFeature, ...]:
    """VW's audit of the one-action example ``text`` under ``arguments``: its first policy's features.

    VW prints, per action and policy, the prediction on one line and then one tab-separated field
    ``name:index:value:weight`` per feature; names hold no tab or colon (the encoders escape them).
    """
    done = subprocess.run(
        [sys.executable, "-c", _AUDIT_PROGRAM],
        input=f"{audit_arguments(arguments)}\n{text}",
        capture_output=True, text=True, timeout=AUDIT_TIMEOUT, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the VW audit failed ({done.returncode}): {done.stderr[-2000:]}")
    # "\n" only: str.splitlines() would also cut at \x1c, \x85, \u2028, … that feature names may hold
    line = next((ln for ln in done.stdout.split("\n") if ln.startswith("\t")), None)
    if line is None:
        raise RuntimeError(f"the VW audit printed no features: {done.stdout[:2000]!r}")
    features = []
    for field in line[1:].split("\t"):
        name, index, value, _ = field.rsplit(":", 3)
        features.append(AuditedFeature(name, int(index), float(value)))
    return tuple(features)


def check_audit_size(shared: str, action: str) -> None:
    """Refuse an example whose features, interactions included, could pass :data:`MAX_AUDITED_FEATURES`.

    ``s`` shared and ``a`` item tokens make at most ``s + a + s·a`` features with quadratic
    interactions: the bound is checked before the child process starts, from the text alone.
    """
    s, a = len(shared.split()), len(action.split())
    if s + a + s * a > MAX_AUDITED_FEATURES:
        raise PreconditionFailed("event_id", f"its example has up to {s + a + s * a:,} features with interactions; "
                                             f"Explain audits at most {MAX_AUDITED_FEATURES:,}")


def audit_arguments(arguments: str) -> str:
    """``arguments`` of a live model for a weightless audit: the same hashing and interactions,
    no file read or written, sparse weights (nothing allocated for 2^bits), test only."""
    kept: list[str] = []
    tokens = iter(arguments.split())
    for token in tokens:
        if token in _FILE_OPTIONS:
            next(tokens, None)
        else:
            kept.append(token)
    extra = [o for o in ("--sparse_weights", "--testonly", "--audit", "--quiet") if o not in kept]
    return " ".join(kept + extra)
