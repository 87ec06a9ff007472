"""Business rules (engine.rules, engine.liverules, engine.frequency): the file and its errors, and
every kind of rule through a real server: eligibility, frequency caps, promotion shares, pins, the
exactness of the logged propensities under them, reloads, and Admin/GetRules."""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import grpc
import pytest

from engine.bandit import example_lines
from engine.errors import ConfigurationError
from engine.exploration import normalised
from engine.frequency import FrequencyCounter
from engine.liverules import RulesInfo
from engine.records import LoggedDecision, SlotChoice
from engine.rules import Eligibility, FrequencyCap, Pin, PromotionShare, load_rules, promotion_shaped
from engine.types import Candidate
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.auth import auth_metadata
from server.client import RecbanditClient
from server.converters import rules_info_to_domain, rules_info_to_proto
from server.settings import Settings
from tests.conftest import postgres_schema, write_tokens

RULES = '''
[[eligibility]]
name = "no-alcohol-on-kids"
items = { category = "alcohol" }
context = { channel = "kids" }

[[frequency_cap]]
name = "two-a-day"
max = 2
window = "1d"

[[frequency_cap]]
name = "three-promotions-a-day"
items = { tags = "promo" }
per = "group"
max = 3
window = "1d"

[[promotion_share]]
name = "promo-first"
items = { tags = "promo" }
share = 1.0
context = { page = "deals" }

[[pin]]
name = "summer-banner"
item_id = "banner"
slot = 1
context = { page = "home" }
'''


def write(path: Path, text: str) -> Path:
    """Replace ``path`` atomically, as the README asks operators to."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def request(user: str, items: Mapping[str, Mapping[str, object]], *, num_results: int = 1, event_id: str = "",
            **context: str) -> pb.RecommendRequest:
    message = pb.RecommendRequest(user_id=user, num_results=num_results, event_id=event_id)
    for name, value in context.items():
        message.context[name].string_value = value
    for item_id, features in items.items():
        candidate = message.candidates.add(item_id=item_id)
        for name, value in features.items():
            if isinstance(value, tuple):
                candidate.features[name].list_value.values.extend(value)
            else:
                candidate.features[name].string_value = str(value)
    return message


def refusal(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


DRINKS = {"beer": {"category": "alcohol"}, "wine": {"category": "alcohol"}, "juice": {"category": "soft"},
          "milk": {"category": "dairy"}, "water": {"category": "soft"}}


# -- the file --------------------------------------------------------------------------------------


def test_a_rules_file_holds_every_kind_in_file_order(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path / "rules.toml", RULES))
    assert [(r.kind, r.name) for r in rules.rules] == [
        ("eligibility", "no-alcohol-on-kids"), ("frequency_cap", "two-a-day"),
        ("frequency_cap", "three-promotions-a-day"), ("promotion_share", "promo-first"), ("pin", "summer-banner")]
    eligibility, = rules.eligibility
    assert isinstance(eligibility, Eligibility)
    assert eligibility.applies({}, {"channel": "kids"}) and not eligibility.applies({}, {"channel": "web"})
    cap = rules.frequency_caps[1]
    assert isinstance(cap, FrequencyCap) and (cap.per, cap.max, cap.window_seconds) == ("group", 3, 86400.0)
    assert isinstance(rules.promotion_shares[0], PromotionShare) and isinstance(rules.pins[0], Pin)


@pytest.mark.parametrize("text, message", [
    ("[[eligibility]]\nname = 'x'\nitems = { category = }\n", r"not valid TOML: .*line 3"),
    ("[[banner]]\nname = 'x'\n", r"'banner' is not a kind of rule"),
    ("[[eligibility]]\nitems = { a = 'b' }\n", r"eligibility rule #1: name must be"),
    ("[[eligibility]]\nname = 'x'\nitems = { a = 'b' }\nwhen = 1\n", r'eligibility rule "x": \'when\' is not a field'),
    ("[[eligibility]]\nname = 'x'\n", r'eligibility rule "x": items is required'),
    ("[[eligibility]]\nname = 'x'\nitems = {}\n", r'eligibility rule "x": items must name at least one feature'),
    ("[[eligibility]]\nname = 'x'\nitems = { a = ['b'] }\n", r"items.a: write a list of values as \{ in = \[...\] \}"),
    ("[[pin]]\nname = 'x'\nitem_id = 'a'\n[[pin]]\nname = 'x'\nitem_id = 'b'\n",
     r'pin rule "x": another rule has this name'),
    ("[[frequency_cap]]\nname = 'x'\nmax = 0\nwindow = '1d'\n",
     r'frequency_cap rule "x": max must be a whole number within \[1, 1000\], got 0'),
    ("[[frequency_cap]]\nname = 'x'\nmax = 2\nwindow = 'daily'\n",
     r'frequency_cap rule "x": window must be a duration'),
    ("[[frequency_cap]]\nname = 'x'\nmax = 2\nwindow = '90d'\n", r"at most 31d"),
    ("[[frequency_cap]]\nname = 'x'\nmax = 2\nwindow = '1d'\nper = 'tag'\n", r'per must be "item" or "group"'),
    ("[[promotion_share]]\nname = 'x'\nitems = { a = 'b' }\nshare = 1.5\n", r"share must be a number within \[0, 1\]"),
    ("[[pin]]\nname = 'x'\nitem_id = 'a'\nslot = 50\n", r"slot must be a whole number within \[0, 49\]"),
    ("[[eligibility]]\nname = 'x'\nitems = { a = { in = [" + ",".join(f"'{i}'" for i in range(257)) + "] } }\n",
     r'eligibility rule "x": more than 256 values'),
    ("".join(f"[[pin]]\nname = 'p{i}'\nitem_id = 'a'\n" for i in range(101)), r"more than 100 rules"),
])
def test_a_file_that_breaks_the_schema_is_refused_naming_the_rule_or_line(tmp_path: Path, text: str,
                                                                          message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_rules(write(tmp_path / "rules.toml", text))


def test_a_bad_rules_file_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^rules: .*rules.toml: not valid TOML"):
        Settings(data_dir=str(tmp_path / "data"), rules=str(write(tmp_path / "rules.toml", "[[pin]\n"))).engine_config()


def test_the_rules_round_trip_through_their_messages(tmp_path: Path) -> None:
    text = RULES + '[[eligibility]]\nname = "adults"\nitems = { adult = true, price = { in = [18, 21.5] } }\n'
    info = RulesInfo("rules.toml", load_rules(write(tmp_path / "rules.toml", text)), 1.5e9, "a line", 1.6e9)
    assert rules_info_to_domain(rules_info_to_proto(info)) == info


def test_a_promotion_share_puts_its_share_on_the_promoted_items_in_the_bandits_proportions() -> None:
    scores = [0.1, 0.2, 0.3, 0.4]
    shaped = promotion_shaped(scores, [True, False, True, False], 0.2)
    assert math.fsum(shaped) == pytest.approx(1.0, abs=1e-15)
    assert shaped[0] + shaped[2] == pytest.approx(0.2) and shaped[2] / shaped[0] == pytest.approx(3.0)
    assert shaped[3] / shaped[1] == pytest.approx(2.0)
    assert promotion_shaped(scores, [True] * 4, 0.2) == normalised(scores)  # one part only: the bandit's pmf


def test_decisions_recorded_while_the_log_is_read_are_counted_once() -> None:
    cap, now = FrequencyCap("three-a-day", 3, 86400.0), time.time()

    def decided(event_id: str, ts: float) -> LoggedDecision:
        return LoggedDecision(event_id, ts, "u", {}, {}, (Candidate("a"),), (SlotChoice("a", 1.0, (1.0,)),), "v",
                              False, ts)

    def read_since(since: float):  # type: ignore[no-untyped-def]
        yield decided("e1", now - 10)
        counter.record(decided("e2", now - 1))  # committed after the read began: not in it

    counter = FrequencyCounter(read_since)
    counter.install([cap], now)
    counter.record(decided("e1", now - 10))  # committed before the read, recorded after it: counted already
    assert counter.limits([cap], "u", [Candidate("a")], 1, now).removed == {}  # two shows, not three
    counter.record(decided("e3", now))
    assert counter.limits([cap], "u", [Candidate("a")], 1, now).removed == {0: "three-a-day"}
    assert counter.limits([cap], "u", [Candidate("a")], 1, now + 86400.0).removed == {}  # the window passed


# -- through a server ------------------------------------------------------------------------------


def test_eligibility_removes_the_items_for_the_matching_context_and_not_for_others(start_server, tmp_path) -> None:
    running, client = start_server(rules=str(write(tmp_path / "rules.toml", RULES)))
    kids = client.recommender.Recommend(request("u1", DRINKS, num_results=3, channel="kids"))
    assert {i.item_id for i in kids.items} == {"juice", "milk", "water"}
    logged = running.engine.log.get_decision(kids.event_id)
    assert [c.item_id for c in logged.candidates] == ["juice", "milk", "water"]  # removed: not logged at all
    assert all(math.fsum(slot.pmf) == pytest.approx(1.0) for slot in logged.slots)
    web = client.recommender.Recommend(request("u2", DRINKS, num_results=5, channel="web"))
    assert {i.item_id for i in web.items} == set(DRINKS)
    too_many = refusal(lambda: client.recommender.Recommend(request("u3", DRINKS, num_results=4, channel="kids")))
    assert too_many.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert too_many.details() == 'num_results: 4 slots asked, but 3 candidates are left under rule "no-alcohol-on-kids"'


def test_a_rule_that_removes_every_candidate_is_a_failed_precondition_naming_it(start_server, tmp_path) -> None:
    _, client = start_server(rules=str(write(tmp_path / "rules.toml", RULES)))
    alcohol = {k: v for k, v in DRINKS.items() if v["category"] == "alcohol"}
    error = refusal(lambda: client.recommender.Recommend(request("u1", alcohol, channel="kids")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'candidates: every candidate is ineligible under rule "no-alcohol-on-kids"'


def test_frequency_caps_per_item_and_per_group_hold_and_spare_other_users(start_server, tmp_path) -> None:
    rules = write(tmp_path / "rules.toml", RULES)
    running, client = start_server(rules=str(rules))
    soft = {"juice": {}, "milk": {}, "water": {}}
    shown = Counter(client.recommender.Recommend(request("u1", soft)).items[0].item_id for _ in range(6))
    assert shown == {"juice": 2, "milk": 2, "water": 2}  # two a day each, and nothing else
    capped = refusal(lambda: client.recommender.Recommend(request("u1", soft)))
    assert capped.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert capped.details() == 'candidates: every candidate is ineligible under rule "two-a-day"'
    assert client.recommender.Recommend(request("u2", soft)).items  # another user is not capped
    shelf = {**{f"p{i}": {"tags": ("promo", "x")} for i in range(3)}, **{f"r{i}": {"tags": ("x",)} for i in range(4)}}
    pages = [client.recommender.Recommend(request("u3", shelf, num_results=2, page="deals")) for _ in range(5)]
    promotions = [item.item_id for page in pages for item in page.items if item.item_id.startswith("p")]
    assert len(promotions) == 3  # slot 0 asks for a promotion every time (share 1): the group cap stops it at 3
    assert [page.items[0].item_id.startswith("p") for page in pages[:2]] == [True, True]
    shelf = {**{f"p{i}": {"tags": ("promo",)} for i in range(4)}, **{f"r{i}": {} for i in range(4)}}
    page = client.recommender.Recommend(request("u4", shelf, num_results=7))  # within one decision too
    assert sum(item.item_id.startswith("p") for item in page.items) == 3

    running.stop(grace=1.0)  # a restart counts the window again from the log
    _, client = start_server(rules=str(rules))
    assert refusal(lambda: client.recommender.Recommend(request("u1", soft))).code() == \
        grpc.StatusCode.FAILED_PRECONDITION
    client.admin.ForgetUser(pb.ForgetUserRequest(user_id="u1"))  # and forgetting the user forgets the counts
    assert client.recommender.Recommend(request("u1", soft)).items


def test_a_cap_added_by_a_reload_counts_what_the_log_holds_and_postgresql_serves_caps_too(start_server,
                                                                                           tmp_path) -> None:
    rules = write(tmp_path / "rules.toml", RULES.split("[[frequency_cap]]")[0])  # eligibility only
    soft = {"juice": {}, "milk": {}}
    with postgres_schema() as store:
        running, client = start_server(rules=str(rules), store=store)
        for _ in range(2):  # each item shown twice: what the cap to come allows
            client.recommender.Recommend(request("u1", soft, num_results=2))
        write(rules, RULES)
        began = time.monotonic()
        while len(running.engine.rules_info().rules.frequency_caps) < 2:
            assert time.monotonic() - began < 2.5, "the edit was not in force within 2.5 s"
            time.sleep(0.05)
        capped = refusal(lambda: client.recommender.Recommend(request("u1", soft)))
        assert capped.details() == 'candidates: every candidate is ineligible under rule "two-a-day"'
        running.stop(grace=1.0)
        running, client = start_server(rules=str(rules), store=store)  # counted again from the store at start
        assert refusal(lambda: client.recommender.Recommend(request("u1", soft))).code() == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert client.recommender.Recommend(request("u2", soft)).items
        running.stop(grace=1.0)


def test_a_pinned_item_fills_its_slot_with_probability_one(start_server, tmp_path) -> None:
    running, client = start_server(rules=str(write(tmp_path / "rules.toml", RULES)))
    shelf = {"banner": {}, **{f"i{n}": {} for n in range(5)}}
    for n in range(10):
        page = client.recommender.Recommend(request(f"u{n}", shelf, num_results=3, page="home"))
        assert (page.items[1].item_id, page.items[1].probability) == ("banner", 1.0)
        logged = running.engine.log.get_decision(page.event_id)
        banner = [c.item_id for c in logged.candidates].index("banner")
        assert logged.slots[1].pmf == tuple(1.0 if i == banner else 0.0 for i in range(len(shelf)))
        assert logged.slots[0].pmf[banner] == logged.slots[2].pmf[banner] == 0.0  # never drawn for another slot
    elsewhere = client.recommender.Recommend(request("v", shelf, num_results=6, page="search"))
    assert max(item.probability for item in elsewhere.items[:-1]) < 1.0  # the pin's context does not match
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id=i, active=True)
                                                            for i in ("banner", "a", "b", "c")]))
    from_catalog = client.recommender.Recommend(pb.RecommendRequest(
        user_id="w", num_results=2, context={"page": pb.FeatureValue(string_value="home")}))
    assert from_catalog.items[1].item_id == "banner"  # a request without candidates: the catalog's item


def test_the_promotion_share_of_first_slots_is_the_configured_share(start_server, tmp_path) -> None:
    text = '[[promotion_share]]\nname = "promo-first"\nitems = { tags = "promo" }\nshare = 0.25\n'
    running, client = start_server(rules=str(write(tmp_path / "rules.toml", text)), seed=11)
    shelf = {"p1": {"tags": ("promo",)}, "p2": {"tags": ("promo", "new")}, **{f"r{i}": {} for i in range(4)}}
    n = 1000
    promoted = 0
    for k in range(n):
        page = client.recommender.Recommend(request(f"u{k % 50}", shelf, num_results=2, event_id=f"share-{k}"))
        promoted += page.items[0].item_id.startswith("p")
        if k < 50:
            pmf = running.engine.log.get_decision(page.event_id).slots[0].pmf
            assert pmf[0] + pmf[1] == pytest.approx(0.25, abs=1e-12)  # the logged pmf carries the share exactly
    margin = 4 * math.sqrt(0.25 * 0.75 / n)
    assert abs(promoted / n - 0.25) < margin, (promoted / n, margin)


def test_empirical_frequencies_match_the_logged_propensities_under_rules(start_server, tmp_path, capsys) -> None:
    """Over 3,000 seeded decisions of a frozen model, each item's frequency in slots 0 and 1 is its
    mean logged probability; a propensity computed over every candidate, without the promotion
    share, or with the share over every candidate, is far from it."""
    text = RULES.replace("share = 1.0", "share = 0.3").replace('context = { page = "deals" }', "")
    running, client = start_server(rules=str(write(tmp_path / "rules.toml", text)), seed=5, exploration="epsilon",
                                   exploration_parameter=0.5)
    shelf = {**DRINKS, "p1": {"category": "snack", "tags": ("promo",)}, "p2": {"category": "snack", "tags": ("promo",)},
             "bread": {"category": "bakery"}}
    context = {"channel": "kids", "hour": "12", "weekday": "mon"}  # one context: one pmf per slot 0
    taught = [client.recommender.Recommend(request(f"t{k}", shelf, num_results=2, event_id=f"teach-{k}",
                                                   **{**context, "channel": "web"})) for k in range(300)]
    for page in taught:  # teach the model a taste (after the decisions: the same model every run), then freeze it
        reward = {"beer": 1.0, "juice": 0.5, "p2": 0.5}.get(page.items[0].item_id, 0.0)  # beer is best, not for kids
        client.recommender.Feedback(pb.FeedbackRequest(event_id=page.event_id, reward=reward))
    assert running.engine.wait_until_learned(10.0)
    n, slots = 3000, 2
    shown: list[Counter[str]] = [Counter() for _ in range(slots)]
    logged_sum: list[Counter[str]] = [Counter() for _ in range(slots)]
    for k in range(n):  # a new user each time: no frequency cap binds
        page = client.recommender.Recommend(request(f"u{k}", shelf, num_results=slots, event_id=f"e-{k}", **context))
        decision = running.engine.log.get_decision(page.event_id)
        for slot, choice in enumerate(decision.slots):
            shown[slot][choice.item_id] += 1
            for candidate, p in zip(decision.candidates, choice.pmf, strict=True):
                logged_sum[slot][candidate.item_id] += p
    deviation = max(abs(shown[s][i] / n - logged_sum[s][i] / n) for s in range(slots) for i in shelf)
    margin = 4 * math.sqrt(0.25 / n)  # four standard errors of a frequency, at its widest (p = 1/2)
    with capsys.disabled():
        print(f"\nmax |empirical - mean logged propensity| over {n} decisions, slots 0-1: {deviation:.4f} "
              f"(margin {margin:.4f})")
    assert deviation < margin
    assert shown[0]["beer"] == shown[0]["wine"] == 0  # ineligible on the kids channel
    misses = {name: max(abs(shown[0][i] / n - broken.get(i, 0.0)) for i in shelf)
              for name, broken in _broken_slot_0(running.engine.bandit, decision.context, shelf, 0.3).items()}
    with capsys.disabled():
        print("max |empirical - broken propensity| in slot 0: "
              + ", ".join(f"{name} {miss:.4f}" for name, miss in misses.items()))
    assert min(misses.values()) > 2 * margin


def _broken_slot_0(bandit, context, shelf, share) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """What broken propensities would log for slot 0 (the model is frozen, the context fixed): the
    bandit's pmf over every candidate, over the eligible ones without the share, and the share
    applied over every candidate."""
    def pmf(items: list[str], promoted_share: float | None) -> dict[str, float]:
        scores = bandit.scores(*example_lines({}, context, ((i, shelf[i]) for i in items)))
        shaped = normalised(scores) if promoted_share is None else \
            promotion_shaped(scores, [i.startswith("p") for i in items], promoted_share)
        return dict(zip(items, shaped, strict=True))

    every, eligible = list(shelf), [i for i in shelf if shelf[i].get("category") != "alcohol"]
    return {"over every candidate": pmf(every, None), "without the share": pmf(eligible, None),
            "the share over every candidate": pmf(every, share)}


def test_an_edited_rules_file_is_reloaded_and_a_broken_edit_keeps_the_rules(start_server, tmp_path, caplog) -> None:
    rules = write(tmp_path / "rules.toml", RULES)
    running, client = start_server(rules=str(rules))
    recbandit = RecbanditClient(f"127.0.0.1:{running.port}")
    before = recbandit.rules()
    assert before.rules == load_rules(rules) and before.file == str(rules) and before.last_error == ""

    write(rules, RULES.replace('category = "alcohol"', 'category = "dairy"').replace("no-alcohol", "no-dairy"))
    began = time.monotonic()
    while "milk" in (offered := _offered(running, client)) or "beer" not in offered:
        assert time.monotonic() - began < 2.5, "the edit was not in force within 2.5 s"
        time.sleep(0.05)
    assert recbandit.rules().rules.eligibility[0].name == "no-dairy-on-kids"

    write(rules, RULES + "\n[[pin]\nname = 'broken'\n")
    began = time.monotonic()
    while not (info := recbandit.rules()).last_error:
        assert time.monotonic() - began < 2.5, "the broken edit was not reported within 2.5 s"
        time.sleep(0.05)
    assert "not valid TOML" in info.last_error and "line" in info.last_error and info.last_error_ts is not None
    time.sleep(1.2)  # another look at the unchanged broken file logs nothing more
    errors = [r.getMessage() for r in caplog.records if r.name == "engine.liverules" and r.levelname == "ERROR"]
    assert len(errors) == 1 and "line" in errors[0] and "the rules in force stay" in errors[0], errors
    assert info.rules.eligibility[0].name == "no-dairy-on-kids"  # the rules in force stay
    assert "milk" not in _offered(running, client)
    recbandit.close()


def _offered(running, client) -> set[str]:  # type: ignore[no-untyped-def]
    """The candidates the kids channel's decision was offered, as logged."""
    page = client.recommender.Recommend(request(f"u{time.monotonic_ns()}", DRINKS, num_results=3, channel="kids"))
    return {c.item_id for c in running.engine.log.get_decision(page.event_id).candidates}


def test_get_rules_needs_the_admin_role(start_server, tmp_path) -> None:
    tokens = {"storefront": "sf-" + "a" * 29, "catalog": "cat-" + "b" * 28, "admin": "adm-" + "c" * 28}
    _, client = start_server(rules=str(write(tmp_path / "rules.toml", RULES)),
                             auth_tokens=str(write_tokens(tmp_path / "tokens", tokens)))
    for role in ("storefront", "catalog"):
        error = refusal(lambda: client.admin.GetRules(pb.GetRulesRequest(), metadata=auth_metadata(tokens[role])))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert refusal(lambda: client.admin.GetRules(pb.GetRulesRequest())).code() == grpc.StatusCode.UNAUTHENTICATED
    answer = client.admin.GetRules(pb.GetRulesRequest(), metadata=auth_metadata(tokens["admin"]))
    assert [(r.name, r.WhichOneof("kind")) for r in answer.rules][-1] == ("summer-banner", "pin")
    assert answer.rules[1].frequency_cap.window_seconds == 86400.0


def test_a_cap_longer_than_the_retention_is_refused_at_start(start_server, tmp_path) -> None:
    with pytest.raises(ConfigurationError,
                       match=r'frequency_cap rule "two-a-day": its window is longer than --retention'):
        start_server(rules=str(write(tmp_path / "rules.toml", RULES)), retention="1h")


def test_overlapping_group_caps_end_a_decision_early_and_every_draw_is_logged(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``both`` is in two groups of one show each: drawn first, it spends both, and nothing is left
    for slot 1. Such a decision has one slot, logged like any other, so slot 0's frequencies in the
    log are the logged probabilities (refusing it would leave ``both`` out of the log)."""
    rules = write(tmp_path / "rules.toml", """
[[frequency_cap]]
name = "one-red"
items = { tags = "red" }
per = "group"
max = 1
window = "1d"

[[frequency_cap]]
name = "one-blue"
items = { tags = "blue" }
per = "group"
max = 1
window = "1d"
""")
    running, client = start_server(rules=str(rules), seed=2, exploration="epsilon", exploration_parameter=1.0)
    shelf = {"both": {"tags": ("red", "blue")}, "red": {"tags": ("red",)}, "blue": {"tags": ("blue",)}}
    n = 600
    pages = [client.recommender.Recommend(request(f"u{k}", shelf, num_results=2, event_id=f"e-{k}")) for k in range(n)]
    first = Counter(page.items[0].item_id for page in pages)
    assert {len(page.items) for page in pages if page.items[0].item_id == "both"} == {1}
    assert all([i.item_id for i in page.items] in (["red", "blue"], ["blue", "red"])
               for page in pages if page.items[0].item_id != "both")
    logged = [running.engine.log.get_decision(f"e-{k}") for k in range(n)]
    assert all(d is not None for d in logged)  # every decision was served and logged
    margin = 4 * math.sqrt(0.25 / n)
    for item_id in shelf:  # uniform over three in slot 0: each a third, as logged
        assert abs(first[item_id] / n - 1 / 3) < margin, first
        assert all(d.slots[0].probability == pytest.approx(1 / 3) for d in logged if d.slots[0].item_id == item_id)
