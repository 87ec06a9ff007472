"""Prometheus metrics of a real server, read from its /metrics endpoint."""

from __future__ import annotations

import os
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.bench import free_port
from server.metrics import MAX_LABELS
from tests.test_api import recommend_request, status_of


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_calls_decisions_rewards_and_learning(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    running, client = start_server(metrics_port=port)
    events = [client.recommender.Recommend(recommend_request()).event_id for _ in range(3)]
    for event_id, label in zip(events, ("click", "purchase"), strict=False):
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label=label))
    client.recommender.Feedback(pb.FeedbackRequest(event_id=events[0], reward=1.0, label="click"))  # a duplicate
    assert status_of(client.recommender.Recommend, pb.RecommendRequest())[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert running.engine.wait_until_learned()
    model = running.engine.model_info().model_version.split("@")[0]
    metrics = scrape(port)
    assert metrics[("recbandit_rpc_requests_total", (("code", "OK"), ("method", "Recommend")))] == 3
    assert metrics[("recbandit_rpc_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "Recommend")))] == 1
    assert metrics[("recbandit_rpc_requests_total", (("code", "OK"), ("method", "Feedback")))] == 3
    assert metrics[("recbandit_rpc_duration_seconds_count", (("method", "Recommend"),))] == 4
    assert metrics[("recbandit_decisions_total", (("model", model),))] == 3
    assert metrics[("recbandit_rewards_total", (("label", "click"),))] == 1  # the duplicate is not new
    assert metrics[("recbandit_rewards_total", (("label", "purchase"),))] == 1
    assert metrics[("recbandit_examples_learned", ())] == 2
    assert metrics[("recbandit_learner_lag_examples", ())] == 0
    assert metrics[("recbandit_rpc_in_flight", ())] == 0
    assert metrics[("recbandit_event_log_writable", ())] == 1
    # what the engine reported: two outcomes learned from rewards, online reward per model and choice
    assert metrics[("recbandit_outcomes_learned_total", (("source", "reward"),))] == 2
    learned = {labels: value for (name, labels), value in metrics.items() if name == "recbandit_learned_slots_total"}
    reward = {labels: value for (name, labels), value in metrics.items() if name == "recbandit_learned_reward_total"}
    assert sum(learned.values()) == 2 and sum(reward.values()) == 2.0
    assert {dict(labels)["model"] for labels in learned} == {model}
    assert {dict(labels)["choice"] for labels in learned} <= {"explore", "exploit"}
    assert metrics[("recbandit_reward_delay_seconds_count", ())] == 2
    assert 0 < metrics[("recbandit_reward_delay_seconds_sum", ())] < 60
    assert metrics[("recbandit_event_log_commit_seconds_count", ())] >= 3  # writes share transactions
    assert metrics[("recbandit_learner_lag_seconds", ())] == 0
    assert 0 <= metrics[("recbandit_model_age_seconds", ())] < 60
    assert metrics[("recbandit_undelivered_decisions_total", ())] == 0


def test_default_rewards_are_counted_apart_and_exploring_slots_apart(start_server) -> None:  # type: ignore[no-untyped-def]
    """Once the model prefers an item, epsilon 0.5 over 5 candidates draws another one 2 times in 5;
    windows without a reward close with the default reward."""
    port = free_port()
    running, client = start_server(metrics_port=port, reward_window="1s", default_reward=0.0,
                                   exploration="epsilon", exploration_parameter=0.5)
    for _ in range(10):  # the model learns a preference from these (it draws uniformly until it has one)
        event_id = client.recommender.Recommend(recommend_request()).event_id
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0))
    assert running.engine.wait_until_learned()
    for _ in range(20):
        client.recommender.Recommend(recommend_request())
    deadline = time.monotonic() + 15
    while running.engine.model_info().examples_learned < 30:
        assert time.monotonic() < deadline, "the reward windows never closed"
        time.sleep(0.1)
    metrics = scrape(port)
    assert metrics[("recbandit_outcomes_learned_total", (("source", "default"),))] == 20
    assert metrics[("recbandit_outcomes_learned_total", (("source", "reward"),))] == 10
    assert metrics[("recbandit_reward_delay_seconds_count", ())] == 10  # only rewards have a delay
    choices = {dict(labels)["choice"]: value for (name, labels), value in metrics.items()
               if name == "recbandit_learned_slots_total"}
    assert sum(choices.values()) == 30 and choices["explore"] >= 3 and choices["exploit"] >= 13


def test_client_labels_cannot_grow_the_metrics_without_bound(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    _, client = start_server(metrics_port=port)
    event_id = client.recommender.Recommend(recommend_request()).event_id
    for j in range(MAX_LABELS + 8):
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label=f"label-{j}"))
    rewards = {labels: value for (name, labels), value in scrape(port).items() if name == "recbandit_rewards_total"}
    assert len(rewards) == MAX_LABELS + 1 and rewards[(("label", "other"),)] == 8


def test_an_operators_label_list_cannot_be_crowded_out(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    _, client = start_server(metrics_port=port, reward_labels="click, purchase")
    event_id = client.recommender.Recommend(recommend_request()).event_id
    for label in [f"junk-{j}" for j in range(MAX_LABELS + 4)] + ["purchase", "other"]:
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label=label))
    rewards = {dict(labels)["label"]: v for (name, labels), v in scrape(port).items() if name == "recbandit_rewards_total"}
    assert rewards == {"purchase": 1.0, "other": MAX_LABELS + 5.0}


def test_metrics_are_off_unless_asked_for(start_server) -> None:  # type: ignore[no-untyped-def]
    from engine.observer import Observer

    running, _ = start_server()
    assert running.metrics_endpoint is None
    assert type(running.engine.observer) is Observer  # the engine reports to no one


def test_negative_rewards_are_learned_and_counted_apart(start_server) -> None:  # type: ignore[no-untyped-def]
    """A counter only grows: a negative reward goes to its own counter, by size, and learning goes on."""
    port = free_port()
    running, client = start_server(metrics_port=port, default_reward=-0.25, reward_window="1s")
    rewarded = client.recommender.Recommend(recommend_request()).event_id
    client.recommender.Feedback(pb.FeedbackRequest(event_id=rewarded, reward=-1.0, label="return"))
    client.recommender.Recommend(recommend_request())  # its window closes with the default reward, -0.25
    deadline = time.monotonic() + 15
    while running.engine.model_info().examples_learned < 2:
        assert time.monotonic() < deadline, "learning stopped"
        time.sleep(0.05)
    metrics = scrape(port)
    negative = sum(v for (name, _), v in metrics.items() if name == "recbandit_learned_negative_reward_total")
    positive = sum(v for (name, _), v in metrics.items() if name == "recbandit_learned_reward_total")
    assert (negative, positive) == (1.25, 0.0)
    assert running.engine.checkpoint().examples_learned == 2


def test_a_retry_of_an_event_id_is_not_a_second_decision(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    running, client = start_server(metrics_port=port)
    for _ in range(3):
        client.recommender.Recommend(recommend_request(event_id="page-1"))
    decisions = sum(v for (name, _), v in scrape(port).items() if name == "recbandit_decisions_total")
    assert decisions == 1 and running.engine.log.reader.counts()["decisions"] == 1


def test_scrapes_do_not_open_a_connection_each(start_server) -> None:  # type: ignore[no-untyped-def]
    """The endpoint serves each scrape on a new thread; the engine's gauges are read on one."""
    port = free_port()
    start_server(metrics_port=port)
    scrape(port)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        scrape(port)
    assert len(os.listdir("/proc/self/fd")) - before < 5


def test_decisions_and_rewarded_slots_are_counted_per_campaign_arm(start_server) -> None:  # type: ignore[no-untyped-def]
    """Two slots a page; a click on slot 1 of every third page, a reward of 0 on slot 0 of others:
    every slot is learned once its window closes, and only the clicked ones are rewarded."""
    from engine.campaign import CONTROL, RECBANDIT, in_control

    port = free_port()
    running, client = start_server(metrics_port=port, control_share=0.4, campaign="spring", reward_window="1s")
    decisions, rewarded = {RECBANDIT: 0, CONTROL: 0}, {RECBANDIT: 0, CONTROL: 0}
    for n in range(60):
        request = recommend_request(n=6, num_results=2)
        request.user_id = f"user-{n}"
        arm = CONTROL if in_control(request.user_id, 0.4, "spring") else RECBANDIT
        reply = client.recommender.Recommend(request)
        decisions[arm] += 1
        if n % 3 == 0:
            client.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, item_id=reply.items[1].item_id,
                                                           reward=1.0, label="click"))
            rewarded[arm] += 1
        elif n % 2 == 0:
            client.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, item_id=reply.items[0].item_id,
                                                           reward=0.0, label="no_click"))
    assert 12 <= decisions[CONTROL] <= 36
    deadline = time.monotonic() + 15
    while running.engine.model_info().examples_learned < 120:
        assert time.monotonic() < deadline, "the reward windows never closed"
        time.sleep(0.1)
    metrics = scrape(port)
    for arm in (RECBANDIT, CONTROL):
        assert metrics[("recbandit_arm_decisions_total", (("arm", arm),))] == decisions[arm]
        assert metrics[("recbandit_arm_learned_slots_total", (("arm", arm),))] == 2 * decisions[arm]
        assert metrics[("recbandit_arm_rewarded_slots_total", (("arm", arm),))] == rewarded[arm]
    assert {dict(labels)["arm"] for (name, labels) in metrics if name.startswith("recbandit_arm_")} == {RECBANDIT, CONTROL}


def test_a_default_reward_above_0_is_not_a_rewarded_slot(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    running, client = start_server(metrics_port=port, reward_window="1s", default_reward=0.5)
    event_ids = [client.recommender.Recommend(recommend_request()).event_id for _ in range(3)]
    client.recommender.Feedback(pb.FeedbackRequest(event_id=event_ids[0], reward=1.0))
    deadline = time.monotonic() + 15
    while running.engine.model_info().examples_learned < 3:
        assert time.monotonic() < deadline, "the reward windows never closed"
        time.sleep(0.1)
    metrics = scrape(port)
    assert metrics[("recbandit_arm_learned_slots_total", (("arm", "recbandit"),))] == 3
    assert metrics[("recbandit_arm_rewarded_slots_total", (("arm", "recbandit"),))] == 1
