"""The gRPC contract, against a real server on 127.0.0.1 with real VW and a real SQLite log."""

from __future__ import annotations

import math
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.client import RecbanditCallError, RecbanditClient, Status
from server.wire import features_to_proto


def recommend_request(n: int = 5, **fields: object) -> pb.RecommendRequest:
    request = pb.RecommendRequest(
        user_id="u1", candidates=[pb.Candidate(item_id=f"i{j}") for j in range(n)], **fields  # type: ignore[arg-type]
    )
    features_to_proto({"segment": "sporty", "age": 31.0, "member": True, "tags": ("run", "hike")}, request.user_features)
    features_to_proto({"channel": "app"}, request.context)
    for j, candidate in enumerate(request.candidates):
        features_to_proto({"category": f"c{j % 2}", "price": 10.0 + j}, candidate.features)
    return request


def status_of(call, request):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    return error.value.code(), error.value.details()


def test_recommend_fills_distinct_slots_with_logged_probabilities(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    response = client.recommender.Recommend(recommend_request(num_results=3))
    assert [item.slot for item in response.items] == [0, 1, 2]
    assert len({item.item_id for item in response.items}) == 3
    assert response.model_version.endswith("@0")
    logged = running.engine.log.get_decision(response.event_id)
    for item, slot in zip(response.items, logged.slots, strict=True):
        assert item.probability == slot.probability > 0
        assert math.fsum(slot.pmf) == pytest.approx(1.0)
    assert logged.slots[1].pmf[int(response.items[0].item_id[1:])] == 0.0  # slot 0's item is out of slot 1
    assert logged.context["channel"] == "app" and "hour" in logged.context and "weekday" in logged.context
    assert logged.user_features["tags"] == ("run", "hike")


def test_recommend_with_the_same_event_id_returns_the_same_decision(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    first = client.recommender.Recommend(recommend_request(num_results=2, event_id="order-42"))
    again = client.recommender.Recommend(recommend_request(num_results=2, event_id="order-42"))
    assert first == again and first.event_id == "order-42"
    assert running.engine.log.reader.counts()["decisions"] == 1
    other_user = recommend_request(event_id="order-42")
    other_user.user_id = "u2"
    assert status_of(client.recommender.Recommend, other_user)[0] == grpc.StatusCode.ALREADY_EXISTS


def test_same_seed_and_event_id_give_the_same_choice_on_a_fresh_server(start_server) -> None:  # type: ignore[no-untyped-def]
    choices = []
    for data in ("a", "b"):
        running, client = start_server(seed=11, data_dir=str(running_dir(data)))
        choices.append([client.recommender.Recommend(recommend_request(event_id=f"e{i}")).items[0].item_id
                        for i in range(20)])
        running.stop(grace=0.5)
    assert choices[0] == choices[1] and len(set(choices[0])) > 1


def running_dir(name: str):  # type: ignore[no-untyped-def]
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"recbandit-{name}-"))


def test_feedback_is_idempotent_and_learned_once(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    response = client.recommender.Recommend(recommend_request(num_results=2))
    second = response.items[1].item_id
    send = client.recommender.Feedback
    assert send(pb.FeedbackRequest(event_id=response.event_id, reward=1.0, label="click")).status == pb.RECORD_STATUS_NEW
    assert send(pb.FeedbackRequest(event_id=response.event_id, reward=1.0, label="click")).status == pb.RECORD_STATUS_DUPLICATE
    assert send(pb.FeedbackRequest(event_id=response.event_id, item_id=second, reward=25.0,
                                   label="purchase")).status == pb.RECORD_STATUS_NEW
    assert running.engine.wait_until_learned()
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert info.examples_learned == 2 and info.examples_pending == 0
    assert info.exploration.algorithm == "squarecb" and "--cb_explore_adf" in info.vw_arguments


def test_default_reward_is_learned_when_the_window_closes(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(reward_window="300ms", default_reward=-0.25)
    event = client.recommender.Recommend(recommend_request()).event_id
    deadline = time.monotonic() + 10
    while running.engine.model_info().examples_learned < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    (outcome,) = running.engine.log.final_outcomes_after(0)
    assert (outcome.event_id, outcome.reward, outcome.source) == (event, -0.25, "default")
    code, details = status_of(client.recommender.Feedback, pb.FeedbackRequest(event_id=event, reward=1.0))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "window" in details


def test_deferred_decisions_are_activated(start_server) -> None:  # type: ignore[no-untyped-def]
    running, _ = start_server(reward_window="400ms")
    with RecbanditClient(f"127.0.0.1:{running.port}") as storefront:  # as a storefront calls it
        candidates = [f"i{j}" for j in range(5)]
        shown = storefront.recommend("u1", candidates=candidates, defer_activation=True).event_id
        never = storefront.recommend("u1", candidates=candidates, defer_activation=True).event_id
        with pytest.raises(RecbanditCallError) as not_yet:
            storefront.feedback(shown, 1.0)
        assert not_yet.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert storefront.activate(shown) is Status.NEW
        assert storefront.activate(shown) is Status.DUPLICATE
        storefront.feedback(shown, 1.0)
        time.sleep(0.6)
        code, details = status_of(storefront.activate, never)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "closed before activation" in details
    running.engine.close_windows()
    assert running.engine.wait_until_learned()
    assert [o.event_id for o in running.engine.log.final_outcomes_after(0)] == [shown]


def test_catalog_items_are_the_candidates_when_none_are_sent(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    items = [pb.Item(item_id=f"sku-{i:02d}", active=i != 3) for i in range(12)]
    for item in items:
        features_to_proto({"category": "shoes", "price": 20.0}, item.features)
    assert client.catalog.UpsertItems(pb.UpsertItemsRequest(items=items)).upserted == 12
    assert client.catalog.DeleteItems(pb.DeleteItemsRequest(item_ids=["sku-05", "missing"])).deleted == 1
    request = pb.RecommendRequest(user_id="u1", num_results=9, exclude_item_ids=["sku-00"])
    response = client.recommender.Recommend(request)
    logged = running.engine.log.get_decision(response.event_id)
    assert [c.item_id for c in logged.candidates] == [f"sku-{i:02d}" for i in (1, 2, 4, 6, 7, 8, 9, 10, 11)]
    assert logged.candidates[0].features == {"category": "shoes", "price": 20.0}
    request.num_results = 10
    code, details = status_of(client.recommender.Recommend, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "num_results: must be at most the 9 candidates left, got 10"


def test_catalog_pages_through_every_item(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id=f"i{i:03d}", active=True) for i in range(25)]))
    seen, token = [], ""
    while True:
        page = client.catalog.ListItems(pb.ListItemsRequest(page_size=10, page_token=token))
        seen += [item.item_id for item in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"i{i:03d}" for i in range(25)]


def test_explicit_candidates_inherit_catalog_features(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    item = pb.Item(item_id="i0", active=True)
    features_to_proto({"category": "bags", "price": 99.0}, item.features)
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[item]))
    response = client.recommender.Recommend(recommend_request(n=3))
    merged = running.engine.log.get_decision(response.event_id).candidates[0].features
    assert merged == {"category": "c0", "price": 10.0}  # the request's values win over the catalog's


def test_health_and_reflection(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    health = health_pb2_grpc.HealthStub(client.channel)
    for service in ("", "recbandit.v1.Recommender", "recbandit.v1.Catalog", "recbandit.v1.Admin"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert {"recbandit.v1.Recommender", "recbandit.v1.Catalog", "recbandit.v1.Admin", "grpc.health.v1.Health"} <= names


def test_checkpoint_rpc_writes_the_model(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    answer = client.admin.Checkpoint(pb.CheckpointRequest())
    assert answer.checkpoint_time.seconds > 0
    assert (running.engine._dir / "checkpoint.json").exists()
    assert client.admin.GetModelInfo(pb.GetModelInfoRequest()).last_checkpoint_time == answer.checkpoint_time


def bad(**fields: object) -> pb.RecommendRequest:
    request = recommend_request()
    for name, value in fields.items():
        if name in ("candidates", "exclude_item_ids"):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


def with_feature(request: pb.RecommendRequest, name: str, value: pb.FeatureValue) -> pb.RecommendRequest:
    request.context[name].CopyFrom(value)
    return request


INVALID = [
    (bad(user_id=""), "user_id: must not be empty"),
    (bad(num_results=-2), "num_results: must be >= 0 (0 means 1), got -2"),
    (bad(num_results=6), "num_results: must be at most the 5 candidates left, got 6"),
    (bad(candidates=[pb.Candidate(item_id="a"), pb.Candidate(item_id="a")]), "candidates[1].item_id: duplicate item_id 'a'"),
    (bad(candidates=[pb.Candidate(item_id="")]), "candidates[0].item_id: must not be empty"),
    (bad(candidates=[pb.Candidate(item_id=f"i{i}") for i in range(501)]), "candidates: must have at most 500 entries, got 501"),
    (with_feature(bad(), "price", pb.FeatureValue(number_value=math.nan)), "context['price']: must be a finite number of magnitude at most 3.4e+38 (VW keeps 32-bit floats), got nan"),
    (with_feature(bad(), "w", pb.FeatureValue(number_value=-math.inf)), "context['w']: must be a finite number of magnitude at most 3.4e+38 (VW keeps 32-bit floats), got -inf"),
    (with_feature(bad(), "unset", pb.FeatureValue()),
     "context['unset']: must set one of string_value, number_value, bool_value, list_value"),
    (with_feature(bad(), "s", pb.FeatureValue(string_value="x" * 2000)), "context['s']: must be at most 1024 characters"),
    (bad(user_id="u" * 300), "user_id: must be at most 256 characters, got 300"),
    (bad(exclude_item_ids=[f"i{i}" for i in range(5)]), "exclude_item_ids: leaves no candidate (excluded or inactive in the catalog)"),
]


@pytest.mark.parametrize(("request_", "message"), INVALID, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(INVALID)])
def test_invalid_recommend_requests_name_the_field(server, request_, message) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    assert status_of(client.recommender.Recommend, request_) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert running.engine.log.reader.counts()["decisions"] == 0


def test_invalid_feedback_and_unknown_events(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    event = client.recommender.Recommend(recommend_request()).event_id
    cases = [
        (pb.FeedbackRequest(event_id="nope", reward=1.0), grpc.StatusCode.NOT_FOUND, "event_id: no decision with event_id 'nope'"),
        (pb.FeedbackRequest(event_id=event, reward=math.nan), grpc.StatusCode.INVALID_ARGUMENT, "reward: must be finite, got nan"),
        (pb.FeedbackRequest(event_id=event, reward=5e6), grpc.StatusCode.INVALID_ARGUMENT,
         "reward: must be within [-1e+06, 1e+06], got 5e+06"),
        (pb.FeedbackRequest(event_id=event, item_id="zzz", reward=1.0), grpc.StatusCode.INVALID_ARGUMENT,
         f"item_id: 'zzz' was not recommended in event '{event}'"),
        (pb.FeedbackRequest(event_id="", reward=1.0), grpc.StatusCode.INVALID_ARGUMENT, "event_id: must not be empty"),
    ]
    for request, code, message in cases:
        assert status_of(client.recommender.Feedback, request) == (code, message)
    assert status_of(client.recommender.Activate, pb.ActivateRequest(event_id="nope"))[0] == grpc.StatusCode.NOT_FOUND
    code, _ = status_of(client.catalog.ListItems, pb.ListItemsRequest(page_token="%%%"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert running.engine.log.reader.counts()["rewards"] == 0


def test_unexpected_failures_are_internal_without_details(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    running, client = server

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret path /var/lib/x")

    for name in ("decide", "decide_async"):  # the server awaits decide_async; both fail alike
        monkeypatch.setattr(running.engine, name, broken)
    code, details = status_of(client.recommender.Recommend, recommend_request())
    assert code == grpc.StatusCode.INTERNAL and "secret" not in details and "RuntimeError" not in details
