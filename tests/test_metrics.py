"""Prometheus metrics of a real server, read from its /metrics endpoint."""

from __future__ import annotations

import socket
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.metrics import MAX_LABELS
from tests.test_api import recommend_request, status_of


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


def test_client_labels_cannot_grow_the_metrics_without_bound(start_server) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    _, client = start_server(metrics_port=port)
    event_id = client.recommender.Recommend(recommend_request()).event_id
    for j in range(MAX_LABELS + 8):
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label=f"label-{j}"))
    rewards = {labels: value for (name, labels), value in scrape(port).items() if name == "recbandit_rewards_total"}
    assert len(rewards) == MAX_LABELS + 1 and rewards[(("label", "other"),)] == 8


def test_metrics_are_off_unless_asked_for(start_server) -> None:  # type: ignore[no-untyped-def]
    running, _ = start_server()
    assert running.metrics_endpoint is None
    port = free_port()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
