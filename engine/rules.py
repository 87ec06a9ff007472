"""Business rules: which candidates a Recommend may offer, and how its slots are filled.

Four kinds, read from a TOML file (:func:`load_rules`; the README's "Business rules" has the schema):

- **eligibility**: items that match ``items`` are not offered when the context and the user match;
- **frequency_cap**: an item (``per = "item"``), or the items a rule matches together
  (``per = "group"``), at most ``max`` times per user within ``window``, counted from the
  decisions themselves (:mod:`engine.frequency`);
- **promotion_share**: the promoted items get ``share`` of a slot's probability (:func:`promotion_shaped`);
- **pin**: an item shown in a slot with probability 1.

Rules act before the draw, so every logged probability is the probability the item was drawn
with. Eligibility and caps remove candidates: they are not in the logged candidate list, like
excluded items, and the pmf is over the candidates left. A pinned slot logs probability 1 and a
pmf that is 1 on its item. A promotion share logs the shaped pmf it draws from.

A match is a table of feature conditions, all of which must hold: ``category = "alcohol"``
(equality), ``category = { in = ["beer", "wine"] }`` (membership); a tags feature (a list of
strings) matches when one of its tags does. A feature that is absent matches nothing.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from engine.errors import ConfigurationError
from engine.exploration import normalised
from engine.rewards import parse_duration
from engine.types import Features

MAX_FILE_BYTES = 256 * 1024
MAX_RULES = 100
MAX_VALUES_PER_RULE = 256
"""Values a rule's conditions hold together (each ``in`` list counts its length)."""
MAX_CONDITIONS = 16
"""Features one match table names."""
MAX_FEATURE_NAME_LENGTH = 128
MAX_VALUE_LENGTH = 1024
MAX_ITEM_ID_LENGTH = 256
MAX_CAP = 1000
"""The largest ``max`` of a frequency cap: each (user, item or group) keeps that many times at most."""
MAX_CAP_WINDOW_SECONDS = 31 * 86_400.0
MAX_SLOT = 49
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

Scalar = str | float | bool


def _key(value: object) -> tuple[str, object]:
    """A value as conditions compare it: ``True`` is not ``1.0``, ``3`` is ``3.0``."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    return ("s", value)


@dataclass(frozen=True, slots=True)
class Condition:
    """``feature`` has one of ``values``; a tags feature when one of its tags is one of them."""

    feature: str
    values: tuple[Scalar, ...]
    _keys: frozenset[tuple[str, object]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", frozenset(map(_key, self.values)))

    def matches(self, features: Features) -> bool:
        value = features.get(self.feature)
        if value is None:
            return False
        if isinstance(value, tuple):
            return any(("s", tag) in self._keys for tag in value)
        return _key(value) in self._keys


Match = tuple[Condition, ...]


def matches(match: Match, features: Features) -> bool:
    """Whether every condition of ``match`` holds (an empty match holds for everything)."""
    return all(c.matches(features) for c in match)


@dataclass(frozen=True, slots=True)
class Eligibility:
    """Items that match ``items`` are not eligible when ``context`` and ``user`` match."""

    name: str
    items: Match
    context: Match = ()
    user: Match = ()
    kind: ClassVar[str] = "eligibility"

    def applies(self, user_features: Features, context: Features) -> bool:
        return matches(self.context, context) and matches(self.user, user_features)


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """At most ``max`` shows per user within ``window_seconds``: of each item that matches ``items``
    (``per == "item"``), or of all of them together (``per == "group"``)."""

    name: str
    max: int
    window_seconds: float
    items: Match = ()
    per: str = "item"
    kind: ClassVar[str] = "frequency_cap"

    def key(self, item_id: str) -> str:
        """What this cap counts a show of ``item_id`` under, for one user: the item, or the group."""
        return item_id if self.per == "item" else ""


@dataclass(frozen=True, slots=True)
class PromotionShare:
    """Slot ``slot`` holds an item that matches ``items`` with probability ``share`` (when the
    candidates left hold both kinds), when ``context`` and ``user`` match."""

    name: str
    items: Match
    share: float
    slot: int = 0
    context: Match = ()
    user: Match = ()
    kind: ClassVar[str] = "promotion_share"

    def applies(self, user_features: Features, context: Features) -> bool:
        return matches(self.context, context) and matches(self.user, user_features)


@dataclass(frozen=True, slots=True)
class Pin:
    """``item_id`` is shown in slot ``slot`` with probability 1 when ``context`` and ``user`` match."""

    name: str
    item_id: str
    slot: int = 0
    context: Match = ()
    user: Match = ()
    kind: ClassVar[str] = "pin"

    def applies(self, user_features: Features, context: Features) -> bool:
        return matches(self.context, context) and matches(self.user, user_features)


Rule = Eligibility | FrequencyCap | PromotionShare | Pin


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rules of one file, each kind in file order."""

    eligibility: tuple[Eligibility, ...] = ()
    frequency_caps: tuple[FrequencyCap, ...] = ()
    promotion_shares: tuple[PromotionShare, ...] = ()
    pins: tuple[Pin, ...] = ()

    @property
    def rules(self) -> tuple[Rule, ...]:
        return (*self.eligibility, *self.frequency_caps, *self.promotion_shares, *self.pins)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def pinned_item_ids(self, user_features: Features, context: Features, num_results: int) -> dict[int, str]:
        """Slot → the item the first pin that applies puts there (slots below ``num_results``; an item once)."""
        pinned: dict[int, str] = {}
        for pin in self.pins:
            if (pin.slot < num_results and pin.slot not in pinned and pin.item_id not in pinned.values()
                    and pin.applies(user_features, context)):
                pinned[pin.slot] = pin.item_id
        return pinned

    def share_of(self, slot: int, user_features: Features, context: Features) -> PromotionShare | None:
        """The first promotion share of ``slot`` that applies, or None."""
        return next((s for s in self.promotion_shares if s.slot == slot and s.applies(user_features, context)), None)


def promotion_shaped(scores: Sequence[float], promoted: Sequence[bool], share: float) -> list[float]:
    """The pmf a slot under a promotion share is drawn from: ``share`` of the probability on the
    promoted candidates, the rest on the others, each part in the bandit's own proportions.

    With ``π`` the bandit's pmf over the candidates left (``normalised(scores)``), ``P`` the promoted
    ones among them, ``N`` the others and ``s`` the share, when both parts are non-empty:

    .. math::

        μ(a) = s · π(a) / π(P)  \\text{ for } a ∈ P, \\qquad μ(a) = (1 − s) · π(a) / π(N)  \\text{ for } a ∈ N

    (uniform within a part to which the bandit gives no probability at all). ``μ`` is the law of a
    two-stage draw: a coin that lands "promoted" with probability ``s`` picks the part, then the
    bandit draws within it, ``μ(a) = P(part of a) · P(a | part)``. One inverse-CDF draw from ``μ``
    is that draw with the coin marginalised out, so the logged ``μ(a)`` is exactly the probability
    that ``a`` was drawn given the context and the earlier slots. That is the propensity inverse
    propensity weighting needs for every target policy, whether it knows of promotions or not; the
    coin's side, which is not logged, is not conditioned on. When ``P`` or ``N`` is empty, ``μ = π``
    (the slot's promoted share is then 0 or 1).
    """
    inside = [i for i, p in enumerate(promoted) if p]
    outside = [i for i, p in enumerate(promoted) if not p]
    if not inside or not outside:
        return normalised(scores)
    pmf = [0.0] * len(scores)
    for part, weight in ((inside, share), (outside, 1.0 - share)):
        for i, p in zip(part, normalised([scores[i] for i in part]), strict=True):
            pmf[i] = weight * p
    return pmf


# -- the file ------------------------------------------------------------------------------------


def load_rules(path: str | Path) -> RuleSet:
    """The rules of the TOML file ``path``; :class:`ConfigurationError` (setting ``rules``) naming the
    file and the line (TOML syntax) or the rule and its field (everything else)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigurationError("rules", f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigurationError("rules", f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigurationError("rules", f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError("rules", f"{path}: not valid TOML: {error}") from None
    except RecursionError:
        raise ConfigurationError("rules", f"{path}: nested too deep") from None
    try:
        return parse_rules(table)
    except _Invalid as error:
        raise ConfigurationError("rules", f"{path}: {error}") from None


class _Invalid(ValueError):
    """A rule breaks the schema; the message names the rule and the field."""


_KINDS = ("eligibility", "frequency_cap", "promotion_share", "pin")


def parse_rules(table: Mapping[str, object]) -> RuleSet:
    """The rules of a parsed TOML document: arrays of tables named by kind (``[[eligibility]]``, …)."""
    unknown = sorted(set(table) - set(_KINDS))
    if unknown:
        raise _Invalid(f"{unknown[0]!r} is not a kind of rule (kinds: {', '.join(_KINDS)})")
    parsed: dict[str, list[Rule]] = {}
    names: set[str] = set()
    count = 0
    for kind in _KINDS:
        entries = table.get(kind, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise _Invalid(f"{kind} must be an array of tables: [[{kind}]]")
        count += len(entries)
        if count > MAX_RULES:
            raise _Invalid(f"more than {MAX_RULES} rules")
        parsed[kind] = []
        for i, entry in enumerate(entries):
            rule = _rule(kind, i, entry)
            if rule.name in names:
                raise _Invalid(f'{kind} rule "{rule.name}": another rule has this name')
            names.add(rule.name)
            parsed[kind].append(rule)
    return RuleSet(*(tuple(parsed[kind]) for kind in _KINDS))  # type: ignore[arg-type]


_FIELDS = {
    "eligibility": ({"name", "items"}, {"context", "user"}),
    "frequency_cap": ({"name", "max", "window"}, {"items", "per"}),
    "promotion_share": ({"name", "items", "share"}, {"slot", "context", "user"}),
    "pin": ({"name", "item_id"}, {"slot", "context", "user"}),
}


def _rule(kind: str, index: int, entry: Mapping[str, object]) -> Rule:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _Invalid(f"{kind} rule #{index + 1}: name must be 1 to 64 letters, digits or _.:- "
                       f"(starting with a letter or digit), got {_got(name)}")
    where = f'{kind} rule "{name}"'
    required, optional = _FIELDS[kind]
    for key in sorted(set(entry) - required - optional):
        raise _Invalid(f"{where}: {key!r} is not a field (fields: {', '.join(sorted(required | optional))})")
    for key in sorted(required - set(entry)):
        raise _Invalid(f"{where}: {key} is required")
    budget = _Budget(where)
    match kind:
        case "eligibility":
            items = _match(entry["items"], f"{where}: items", budget, required=True)
            return Eligibility(name, items, _match(entry.get("context", {}), f"{where}: context", budget),
                               _match(entry.get("user", {}), f"{where}: user", budget))
        case "frequency_cap":
            per = entry.get("per", "item")
            if per not in ("item", "group"):
                raise _Invalid(f"{where}: per must be \"item\" or \"group\", got {_got(per)}")
            return FrequencyCap(name, _integer(entry["max"], f"{where}: max", 1, MAX_CAP),
                                _window(entry["window"], where),
                                _match(entry.get("items", {}), f"{where}: items", budget), str(per))
        case "promotion_share":
            share = entry["share"]
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
                raise _Invalid(f"{where}: share must be a number within [0, 1], got {_got(share)}")
            return PromotionShare(name, _match(entry["items"], f"{where}: items", budget, required=True), float(share),
                                  _integer(entry.get("slot", 0), f"{where}: slot", 0, MAX_SLOT),
                                  _match(entry.get("context", {}), f"{where}: context", budget),
                                  _match(entry.get("user", {}), f"{where}: user", budget))
        case _:
            item_id = entry["item_id"]
            if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ITEM_ID_LENGTH:
                raise _Invalid(f"{where}: item_id must be a string of 1 to {MAX_ITEM_ID_LENGTH} characters")
            return Pin(name, item_id, _integer(entry.get("slot", 0), f"{where}: slot", 0, MAX_SLOT),
                       _match(entry.get("context", {}), f"{where}: context", budget),
                       _match(entry.get("user", {}), f"{where}: user", budget))


class _Budget:
    """The values a rule's conditions may still hold (:data:`MAX_VALUES_PER_RULE`)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.left = MAX_VALUES_PER_RULE

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise _Invalid(f"{self.where}: more than {MAX_VALUES_PER_RULE} values in its conditions")


def _match(table: object, where: str, budget: _Budget, *, required: bool = False) -> Match:
    if not isinstance(table, dict):
        raise _Invalid(f"{where} must be a table of feature conditions, e.g. {{ category = \"alcohol\" }}")
    if required and not table:
        raise _Invalid(f"{where} must name at least one feature")
    if len(table) > MAX_CONDITIONS:
        raise _Invalid(f"{where}: more than {MAX_CONDITIONS} features")
    conditions = []
    for feature, value in table.items():
        if not 0 < len(feature) <= MAX_FEATURE_NAME_LENGTH:
            raise _Invalid(f"{where}: feature names must be 1 to {MAX_FEATURE_NAME_LENGTH} characters")
        at = f"{where}.{feature}"
        if isinstance(value, dict):
            if set(value) != {"in"} or not isinstance(value["in"], list) or not value["in"]:
                raise _Invalid(f"{at} must be a value or {{ in = [one or more values] }}")
            values = tuple(_scalar(v, at) for v in value["in"])
        else:
            values = (_scalar(value, at),)
        budget.spend(len(values))
        conditions.append(Condition(feature, values))
    return tuple(conditions)


def _scalar(value: object, at: str) -> Scalar:
    if isinstance(value, str):
        if len(value) > MAX_VALUE_LENGTH:
            raise _Invalid(f"{at}: a value is longer than {MAX_VALUE_LENGTH} characters")
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, list):
        raise _Invalid(f"{at}: write a list of values as {{ in = [...] }}")
    raise _Invalid(f"{at}: values must be strings, finite numbers or booleans, got {_got(value)}")


def _got(value: object) -> str:
    """A value from the file as an error message shows it: its TOML-like form, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:40]}…"


def _integer(value: object, at: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Invalid(f"{at} must be a whole number within [{low}, {high}], got {_got(value)}")
    return value


def _window(value: object, where: str) -> float:
    try:
        seconds = parse_duration(value) if isinstance(value, str) else math.nan
    except ConfigurationError:
        seconds = math.nan
    if not 0 < seconds <= MAX_CAP_WINDOW_SECONDS:
        raise _Invalid(f"{where}: window must be a duration above 0 and at most 31d, like \"12h\" or \"1d\", "
                       f"got {_got(value)}")
    return seconds
