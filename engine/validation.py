"""The documented limits on requests, and the checks that enforce them.

Every check raises :class:`~engine.errors.InvalidRequest` naming the field and the rule, e.g.
``candidates[3].features['price']: must be finite, got nan``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Protocol

from engine.errors import InvalidRequest, shown
from engine.types import Candidate, DecisionRequest, Features, Item, RewardReport

Checked = Callable[[Candidate | Item], bool]


class _SizedDecisionRequest(Protocol):
    user_id: str
    event_id: str
    num_results: int

    @property
    def user_features(self) -> Sized: ...
    @property
    def context(self) -> Sized: ...
    @property
    def candidates(self) -> Sized: ...
    @property
    def exclude_item_ids(self) -> Sized: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds on what one request may carry; the README lists them for API users."""

    max_id_length: int = 256
    max_features: int = 256
    max_feature_name_length: int = 128
    max_string_length: int = 1024
    max_list_length: int = 64
    max_candidates: int = 500
    max_num_results: int = 50
    max_excluded_items: int = 1000
    max_label_length: int = 64
    max_items_per_call: int = 1000
    min_reward: float = -1e6
    max_reward: float = 1e6


def check_id(field: str, value: str, limits: Limits, *, required: bool = True) -> None:
    if required and not value:
        raise InvalidRequest(field, "must not be empty")
    if len(value) > limits.max_id_length:
        raise InvalidRequest(field, f"must be at most {limits.max_id_length} characters, got {len(value)}")


def check_count(field: str, count: int, maximum: int) -> None:
    if count > maximum:
        raise InvalidRequest(field, f"must have at most {maximum} entries, got {count}")


MAX_FEATURE_NUMBER = 3.4e38
"""The largest magnitude of a number feature: VW keeps feature values as 32-bit floats."""


def check_features(field: str, features: Features, limits: Limits) -> None:
    check_count(field, len(features), limits.max_features)
    for name, value in features.items():
        if not name:
            raise InvalidRequest(field, "feature names must not be empty")
        if len(name) > limits.max_feature_name_length:
            raise InvalidRequest(
                field, f"feature names must be at most {limits.max_feature_name_length} characters"
            )
        _check_value(f"{field}[{shown(name)}]", value, limits)


def _check_value(field: str, value: object, limits: Limits) -> None:
    if isinstance(value, str):  # the common case first
        if len(value) > limits.max_string_length:
            raise InvalidRequest(field, f"must be at most {limits.max_string_length} characters")
    elif isinstance(value, bool):
        pass
    elif isinstance(value, float):
        if not -MAX_FEATURE_NUMBER <= value <= MAX_FEATURE_NUMBER:  # NaN fails this too
            raise InvalidRequest(field, f"must be a finite number of magnitude at most {MAX_FEATURE_NUMBER:.3g} "
                                        f"(VW keeps 32-bit floats), got {value}")
    elif isinstance(value, tuple):
        if len(value) > limits.max_list_length:
            raise InvalidRequest(field, f"must have at most {limits.max_list_length} values, got {len(value)}")
        for i, element in enumerate(value):
            _check_value(f"{field}[{i}]", element, limits)
    else:
        raise InvalidRequest(field, "must be a string, number, bool or list of strings")


def check_candidates(
    field: str, candidates: Iterable[Candidate | Item], limits: Limits, checked: Checked | None = None
) -> None:
    """Ids present, short and distinct; features within the limits.

    ``checked(candidate)`` may say that a candidate's features already passed these checks (the
    engine remembers recently seen read-only candidates), so they are not checked again.
    """
    seen: set[str] = set()
    for i, candidate in enumerate(candidates):
        item_id = candidate.item_id
        if item_id in seen:
            raise InvalidRequest(f"{field}[{i}].item_id", f"duplicate item_id {shown(item_id)}")
        seen.add(item_id)
        if checked is not None and checked(candidate):
            continue  # its id and features passed these checks before
        check_id(f"{field}[{i}].item_id", item_id, limits)
        check_features(f"{field}[{i}].features", candidate.features, limits)


def check_decision_request(request: DecisionRequest, limits: Limits, checked: Checked | None = None) -> None:
    """Check everything about a Recommend request that does not need the catalog."""
    check_decision_sizes(request, limits)
    check_features("user_features", request.user_features, limits)
    check_features("context", request.context, limits)
    check_candidates("candidates", request.candidates, limits, checked)
    for i, item_id in enumerate(request.exclude_item_ids):
        check_id(f"exclude_item_ids[{i}]", item_id, limits)


def check_decision_sizes(request: _SizedDecisionRequest, limits: Limits) -> None:
    """The counts and top-level sizes of a Recommend request: a few ``len`` calls.

    ``request`` is a :class:`~engine.types.DecisionRequest` or the raw message it is made from
    (the same field names), so the server checks these before converting anything.
    """
    check_id("user_id", request.user_id, limits)
    check_id("event_id", request.event_id, limits, required=False)
    check_count("user_features", len(request.user_features), limits.max_features)
    check_count("context", len(request.context), limits.max_features)
    if request.num_results < 0:
        raise InvalidRequest("num_results", f"must be >= 0 (0 means 1), got {request.num_results}")
    if request.num_results > limits.max_num_results:
        raise InvalidRequest("num_results", f"must be at most {limits.max_num_results}, got {request.num_results}")
    check_count("candidates", len(request.candidates), limits.max_candidates)
    check_count("exclude_item_ids", len(request.exclude_item_ids), limits.max_excluded_items)


def check_reward_report(report: RewardReport, limits: Limits) -> None:
    check_id("event_id", report.event_id, limits)
    check_id("item_id", report.item_id, limits, required=False)
    if len(report.label) > limits.max_label_length:
        raise InvalidRequest("label", f"must be at most {limits.max_label_length} characters")
    if not math.isfinite(report.reward):
        raise InvalidRequest("reward", f"must be finite, got {report.reward}")
    if not limits.min_reward <= report.reward <= limits.max_reward:
        raise InvalidRequest(
            "reward", f"must be within [{limits.min_reward:g}, {limits.max_reward:g}], got {report.reward:g}"
        )


def check_items(field: str, items: list[Item], limits: Limits) -> None:
    check_count(field, len(items), limits.max_items_per_call)
    check_candidates(field, items, limits)
