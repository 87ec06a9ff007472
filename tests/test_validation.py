"""Bad requests are refused with a message that names the field and the rule."""

from __future__ import annotations

import dataclasses
import math

import pytest

from engine.errors import InvalidRequest
from engine.types import Candidate, DecisionRequest, RewardReport
from engine.validation import Limits, check_decision_request, check_reward_report

LIMITS = Limits()
OK = DecisionRequest(user_id="u1", candidates=(Candidate("a"), Candidate("b")))

NUMBER_RULE = r"must be a finite number of magnitude at most 3\.4e\+38 \(VW keeps 32-bit floats\), got "


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"user_id": ""}, r"^user_id: must not be empty$"),
        ({"user_id": "u" * 257}, r"^user_id: must be at most 256 characters, got 257$"),
        ({"num_results": -1}, r"^num_results: must be >= 0 \(0 means 1\), got -1$"),
        ({"num_results": 51}, r"^num_results: must be at most 50, got 51$"),
        ({"candidates": (Candidate("a"), Candidate("a"))}, r"^candidates\[1\]\.item_id: duplicate item_id 'a'$"),
        ({"candidates": (Candidate(""),)}, r"^candidates\[0\]\.item_id: must not be empty$"),
        ({"candidates": tuple(Candidate(f"i{i}") for i in range(501))}, r"^candidates: must have at most 500"),
        ({"user_features": {"age": math.nan}}, rf"^user_features\['age'\]: {NUMBER_RULE}nan$"),
        ({"context": {"price": math.inf}}, rf"^context\['price'\]: {NUMBER_RULE}inf$"),
        ({"context": {"price": 1e300}}, rf"^context\['price'\]: {NUMBER_RULE}1e\+300$"),
        ({"context": {"": "x"}}, r"^context: feature names must not be empty$"),
        ({"context": {"s": "x" * 1025}}, r"^context\['s'\]: must be at most 1024 characters$"),
        ({"context": {f"f{i}": 1.0 for i in range(257)}}, r"^context: must have at most 256 entries, got 257$"),
        ({"context": {"tags": tuple("x" * 65)}}, r"^context\['tags'\]: must have at most 64 values, got 65$"),
        (
            {"candidates": (Candidate("a", {"w": -math.inf}),)},
            rf"^candidates\[0\]\.features\['w'\]: {NUMBER_RULE}-inf$",
        ),
        ({"exclude_item_ids": ("",)}, r"^exclude_item_ids\[0\]: must not be empty$"),
        ({"event_id": "e" * 300}, r"^event_id: must be at most 256 characters, got 300$"),
    ],
)
def test_bad_recommend_requests(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_decision_request(dataclasses.replace(OK, **change), LIMITS)


def test_a_good_request_passes() -> None:
    check_decision_request(OK, LIMITS)


@pytest.mark.parametrize(
    ("report", "message"),
    [
        (RewardReport("", 1.0), r"^event_id: must not be empty$"),
        (RewardReport("e", math.nan), r"^reward: must be finite, got nan$"),
        (RewardReport("e", 2e6), r"^reward: must be within \[-1e\+06, 1e\+06\], got 2e\+06$"),
        (RewardReport("e", 1.0, label="x" * 65), r"^label: must be at most 64 characters$"),
    ],
)
def test_bad_reward_reports(report: RewardReport, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_reward_report(report, LIMITS)
