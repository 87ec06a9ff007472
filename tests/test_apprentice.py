"""Apprentice mode: the storefront's order served while the model learns, its figures, and the switch."""

from __future__ import annotations

import math
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from engine.apprentice import ApprenticeConfig, ApprenticeSlot, ApprenticeTally, apprentice_pmf, model_choice
from engine.errors import ConfigurationError
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.auth import auth_metadata
from server.bench import free_port
from server.settings import Settings
from tests.conftest import write_tokens
from tests.test_api import recommend_request
from tests.test_metrics import scrape


def refusal(call) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def shuffled_request(rng: np.random.Generator, n: int = 4, num_results: int = 1) -> pb.RecommendRequest:
    """Candidates i0..i{n-1} in an order of the storefront's that changes from request to request."""
    request = recommend_request(n=n, num_results=num_results)
    order = rng.permutation(n)
    candidates = [request.candidates[int(j)] for j in order]
    del request.candidates[:]
    request.candidates.extend(candidates)
    return request


def mode_of(client) -> pb.ServingMode:  # type: ignore[no-untyped-def]
    return client.admin.GetModelInfo(pb.GetModelInfoRequest()).serving_mode


def test_apprentice_serves_the_storefronts_order_and_keeps_the_models_choice(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(mode="apprentice")
    assert mode_of(client).mode == "apprentice" and mode_of(client).reason == "started with --mode apprentice"
    request = recommend_request(n=6, num_results=3)
    request.exclude_item_ids.append("i1")
    for _ in range(30):
        reply = client.recommender.Recommend(request)
        assert [i.item_id for i in reply.items] == ["i0", "i2", "i3"]  # the first ones each slot may hold
        assert [i.probability for i in reply.items] == [1.0, 1.0, 1.0]
        logged = running.engine.log.get_decision(reply.event_id)
        assert [b for b, _ in logged.apprentice] == ["i0", "i2", "i3"]
        earlier: set[str] = set()
        for slot, (_, model) in zip(logged.slots, logged.apprentice, strict=True):
            assert model in {c.item_id for c in logged.candidates} - earlier  # among those the slot may hold
            earlier.add(slot.item_id)
        assert logged.slots[0].pmf == (1.0, 0.0, 0.0, 0.0, 0.0)  # i1 excluded: five candidates logged


def test_a_pin_holds_in_apprentice_mode(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules.toml"
    rules.write_text('[[pin]]\nname = "banner"\nitem_id = "i3"\nslot = 0\n')
    running, client = start_server(mode="apprentice", rules=str(rules))
    reply = client.recommender.Recommend(recommend_request(n=5, num_results=2))
    assert [i.item_id for i in reply.items] == ["i3", "i0"]
    assert running.engine.log.get_decision(reply.event_id).apprentice[0] is None  # a pinned slot: no choice to compare


def test_a_promotion_share_holds_in_apprentice_mode(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Slot 0 under a share of 0.3: the baseline i0 keeps 0.7, the promoted i3 and i4 share 0.3."""
    rules = tmp_path / "rules.toml"
    rules.write_text('[[promotion_share]]\nname = "promo-first"\nitems = { tags = "promo" }\nshare = 0.3\nslot = 0\n')
    running, client = start_server(mode="apprentice", rules=str(rules))
    shown: Counter[str] = Counter()
    decisions = 1000
    for n in range(decisions):
        request = recommend_request(n=5, event_id=f"e{n}")
        for candidate in request.candidates[3:]:
            candidate.features["tags"].list_value.values.append("promo")
        reply = client.recommender.Recommend(request)
        item = reply.items[0]
        shown[item.item_id] += 1
        assert item.probability == pytest.approx({"i0": 0.7, "i3": 0.15, "i4": 0.15}[item.item_id])
    for item_id, probability in {"i0": 0.7, "i3": 0.15, "i4": 0.15}.items():
        assert abs(shown[item_id] / decisions - probability) < 4 * math.sqrt(0.25 / decisions)


def test_exploration_draws_with_the_logged_probabilities(start_server) -> None:  # type: ignore[no-untyped-def]
    """μ = 0.8 · one-hot(first) + 0.2 / m: slot 0 over 5 candidates, slot 1 over the 4 left."""
    running, client = start_server(mode="apprentice", apprentice_exploration=0.2)
    served: Counter[tuple[int, str]] = Counter()
    logged_probability: dict[tuple[int, str], set[float]] = {}
    decisions = 1500
    for n in range(decisions):
        reply = client.recommender.Recommend(recommend_request(n=5, num_results=2, event_id=f"e{n}"))
        first = "i0" if reply.items[0].item_id != "i0" else "i1"  # the first candidate slot 1 may hold
        for item, baseline in zip(reply.items, ("i0", first), strict=True):
            kind = "baseline" if item.item_id == baseline else "other"
            served[item.slot, kind] += 1
            logged_probability.setdefault((item.slot, kind), set()).add(item.probability)
    expected = {(0, "baseline"): 0.8 + 0.2 / 5, (0, "other"): 0.2 / 5, (1, "baseline"): 0.8 + 0.2 / 4,
                (1, "other"): 0.2 / 4}
    for key, probability in expected.items():
        assert logged_probability[key] and all(p == pytest.approx(probability) for p in logged_probability[key])
    for slot in (0, 1):  # the four others share slot 0's exploration, the three others slot 1's
        others = 4 if slot == 0 else 3
        frequency = served[slot, "other"] / decisions
        assert abs(frequency - others * expected[slot, "other"]) < 4 * math.sqrt(0.2 * 0.8 / decisions)
    assert abs(served[0, "baseline"] / decisions - 0.84) < 0.04  # 4 sigma; serving i0 always would be 1.0


def _rewarded_decisions(client, rng, count: int, liked: str) -> list[str]:  # type: ignore[no-untyped-def]
    """``count`` one-slot decisions over shuffled candidates, each rewarded 1 if it served ``liked``, else 0."""
    event_ids = []
    for n in range(count):
        request = shuffled_request(rng)
        request.event_id = f"{liked}-{n}"  # the seeded draws, and so the test, are the same every run
        reply = client.recommender.Recommend(request)
        reward = 1.0 if reply.items[0].item_id == liked else 0.0
        client.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=reward, label="click"))
        event_ids.append(reply.event_id)
    return event_ids


def test_the_model_learns_meanwhile_and_the_figures_are_those_of_the_log(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    running, client = start_server(mode="apprentice", apprentice_exploration=0.2, apprentice_window=100,
                                   metrics_port=port)
    rng = np.random.default_rng(7)
    event_ids = _rewarded_decisions(client, rng, 400, liked="i2")
    assert running.engine.wait_until_learned(30)
    decisions = [running.engine.log.get_decision(e) for e in event_ids]
    late = [d.apprentice[0][1] for d in decisions[-100:]]
    assert late.count("i2") > 60  # a planted preference: chance is 25 of 100
    rows = []  # the newest 100 learned slots, by hand: match, the baseline's and the model's IPS terms
    for d in decisions[-100:]:
        baseline, model = d.apprentice[0]
        slot = d.slots[0]
        reward = 1.0 if slot.item_id == "i2" else 0.0
        rows.append((baseline == model, reward * (slot.item_id == baseline) / slot.probability,
                     reward * (slot.item_id == model) / slot.probability))
    figures = mode_of(client).apprentice
    assert figures.slots == 100 and figures.window == 100 and figures.identified_share == 1.0
    assert figures.match_rate == pytest.approx(np.mean([r[0] for r in rows]))
    assert figures.baseline_reward == pytest.approx(np.mean([r[1] for r in rows]))
    assert figures.model_reward == pytest.approx(np.mean([r[2] for r in rows]))
    assert figures.model_reward > 0.6 > 0.4 > figures.baseline_reward  # i2 is first a quarter of the time
    gauges = scrape(port)  # the metrics say the same
    assert gauges["recbandit_apprentice_mode", ()] == 1.0 and gauges["recbandit_apprentice_slots", ()] == 100
    for name in ("match_rate", "baseline_reward", "model_reward", "identified_share"):
        assert gauges[f"recbandit_apprentice_{name}", ()] == pytest.approx(getattr(figures, name))


def test_without_exploration_the_baseline_reward_is_observed_and_only_matches_are_identified(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(mode="apprentice", apprentice_window=50)
    rng = np.random.default_rng(3)
    event_ids = _rewarded_decisions(client, rng, 80, liked="i1")
    assert running.engine.wait_until_learned(30)
    decisions = [running.engine.log.get_decision(e) for e in event_ids][-50:]
    observed = np.mean([d.slots[0].item_id == "i1" for d in decisions])
    matches = np.mean([b == m for b, m in (d.apprentice[0] for d in decisions)])
    figures = mode_of(client).apprentice
    assert figures.baseline_reward == pytest.approx(observed)
    assert figures.identified_share == pytest.approx(matches) and figures.match_rate == pytest.approx(matches)


def test_it_switches_at_the_threshold_and_stays_switched_after_a_restart(start_server, caplog) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(mode="apprentice", apprentice_exploration=0.3, apprentice_until=0.9,
                                   apprentice_window=40)
    request = recommend_request(n=3)
    matches, switched_at = [], None
    for n in range(400):
        request.event_id = f"e{n}"
        reply = client.recommender.Recommend(request)
        logged = running.engine.log.get_decision(reply.event_id)
        if not logged.apprentice:  # served online: the switch came before this decision
            switched_at = n
            break
        matches.append(logged.apprentice[0][0] == logged.apprentice[0][1])
        reward = 1.0 if reply.items[0].item_id == "i0" else 0.0  # the storefront's first is the best
        client.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=reward, label="click"))
        assert running.engine.wait_until_learned(10)
        running.engine.learn_pending()  # after the background pass that learned it, switch included
    assert switched_at is not None and switched_at >= 40  # never before the window is full
    assert np.mean(matches[-40:]) >= 0.9  # the window that switched it
    assert switched_at == 40 or np.mean(matches[-41:-1]) < 0.9  # and the one before did not
    mode = mode_of(client)
    assert mode.mode == "online" and mode.reason.startswith("match rate ") and "--apprentice-until 0.9" in mode.reason
    assert "serving mode: apprentice → online (match rate" in caplog.text
    running.stop(grace=1.0)

    running, client = start_server(mode="apprentice", apprentice_window=40)  # the store's mode wins over the flag
    assert mode_of(client).mode == "online" and mode_of(client).since == mode.since
    reply = client.recommender.Recommend(recommend_request(n=3))
    assert not running.engine.log.get_decision(reply.event_id).apprentice
    assert mode_of(client).apprentice.slots == 40  # the figures read back from the log


def test_the_admin_switch_needs_the_admin_role_and_checks_the_mode(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tokens = {"storefront": "sf-" + "a" * 29, "catalog": "cat-" + "b" * 28, "admin": "adm-" + "c" * 28}
    running, client = start_server(auth_tokens=str(write_tokens(tmp_path / "tokens", tokens)))
    admin = auth_metadata(tokens["admin"])
    switch = client.admin.SetServingMode
    for role in ("storefront", "catalog"):
        error = refusal(lambda: switch(pb.SetServingModeRequest(mode="apprentice"), metadata=auth_metadata(tokens[role])))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert running.engine.apprentice.mode.mode == "online"
    error = refusal(lambda: switch(pb.SetServingModeRequest(mode="shadow"), metadata=admin))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "mode: must be online or apprentice, got 'shadow'"
    answer = switch(pb.SetServingModeRequest(mode="apprentice"), metadata=admin)
    assert answer.changed and answer.serving_mode.mode == "apprentice"
    assert not switch(pb.SetServingModeRequest(mode="apprentice"), metadata=admin).changed
    reply = client.recommender.Recommend(recommend_request(n=4), metadata=admin)
    assert reply.items[0].item_id == "i0" and reply.items[0].probability == 1.0
    running.stop(grace=1.0)
    running, client = start_server(auth_tokens=str(write_tokens(tmp_path / "tokens", tokens)))
    assert running.engine.apprentice.mode.mode == "apprentice"  # the switch is the store's: a restart keeps it


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("apprentice_exploration", 1.0, "apprentice_exploration: must be at least 0 and below 1, got 1"),
    ("apprentice_exploration", -0.1, "apprentice_exploration: must be at least 0 and below 1, got -0.1"),
    ("apprentice_until", 1.5, "apprentice_until: must be a match rate above 0 and at most 1, got 1.5"),
    ("apprentice_until", -1.0, "apprentice_until: must be above 0 and at most 1 (0: none), got -1"),
    ("apprentice_window", 5, "apprentice_window: must be within [10, 100000] slots, got 5"),
])
def test_bad_settings_are_refused_naming_the_setting(tmp_path, setting: str, value: float, message: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=str(tmp_path), **{setting: value})
    with pytest.raises(ConfigurationError) as error:
        settings.engine_config()
    assert str(error.value) == message


def test_a_bad_mode_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"^mode: must be online or apprentice, got 'shadow'$"):
        ApprenticeConfig(mode="shadow").validate()


def test_the_pmf_and_the_models_choice() -> None:
    assert apprentice_pmf(4, 0.2) == pytest.approx([0.85, 0.05, 0.05, 0.05])
    assert apprentice_pmf(3, 0.0) == [1.0, 0.0, 0.0]
    assert model_choice([0.1, 0.7, 0.2], 0, "e", 0) == 1
    ties = Counter(model_choice([0.25] * 4, 0, f"e{n}", 0) for n in range(2000))  # a fresh model: not the first
    assert set(ties) == {0, 1, 2, 3} and max(ties.values()) < 600


def test_the_tally_keeps_the_newest_window() -> None:
    tally = ApprenticeTally(window=10)
    for n in range(15):  # the first five fall out of the window
        tally.add(ApprenticeSlot(float(n), n >= 5, True, n >= 5, 0.5, True), 1.0)
    stats = tally.stats()
    assert (stats.slots, stats.match_rate, stats.baseline_reward, stats.model_reward) == (10, 1.0, 2.0, 2.0)
    assert tally.full
    tally.drop_before(12.0)
    assert tally.stats().slots == 3 and not tally.full


def test_every_process_of_a_store_follows_a_switch(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from engine.core import Engine, EngineConfig
    from tests.conftest import postgres_schema

    with postgres_schema() as store:
        learner = Engine(EngineConfig(tmp_path / "learner", store=store, role="learn", model_poll_interval=0.1,
                                      apprentice=ApprenticeConfig(mode="apprentice")))
        try:
            replica, client = start_server(store=store, role="serve", data_dir=str(tmp_path / "replica"),
                                           model_poll_interval=0.1)  # started online: the store's mode wins
            reply = client.recommender.Recommend(recommend_request(n=4))
            assert reply.items[0].item_id == "i0" and reply.items[0].probability == 1.0
            assert mode_of(client).mode == "apprentice" and not mode_of(client).HasField("apprentice")
            assert client.admin.SetServingMode(pb.SetServingModeRequest(mode="online")).changed
            assert replica.engine.apprentice.mode.mode == "online"  # at once where it was called
            deadline = time.monotonic() + 10
            while learner.apprentice.mode.mode != "online" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert learner.apprentice.mode.mode == "online"  # the learner follows within a second
        finally:
            learner.close()
