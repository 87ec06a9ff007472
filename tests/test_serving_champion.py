"""Servers follow the registry's champion: ReloadPolicy and the poll swap policies under traffic, no RPC fails."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from engine.checkpoint import read_checkpoint
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.wire import features_to_proto
from tests.conftest import Traffic
from tests.test_evaluate import SEGMENTS, make_log
from tests.test_registry import EXPLORER, LEARNER
from training.evaluate import EvaluationConfig
from training.registry import CHAMPION, MODEL_NAME, RegistrationFloor, evaluate_and_register, promote
from training.tracking import tracking_client

ITEMS = 6


def _request(n: int) -> pb.RecommendRequest:
    request = pb.RecommendRequest(user_id=f"user-{n % 50}", num_results=2)
    features_to_proto({"segment": SEGMENTS[n % len(SEGMENTS)]}, request.user_features)
    features_to_proto({"channel": "web", "hour": "12", "weekday": "tue"}, request.context)
    return request


def _recommend_and_reward(client) -> Callable[[int], None]:  # type: ignore[no-untyped-def]
    """One storefront round for :class:`Traffic`: a Recommend, then its Feedback."""

    def call(n: int) -> None:
        response = client.recommender.Recommend(_request(n))
        client.recommender.Feedback(pb.FeedbackRequest(event_id=response.event_id, reward=float(n % 3 == 0)))

    return call


def _wait_for_version(client, version: str, timeout: float = 20.0) -> pb.GetModelInfoResponse:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (info := client.admin.GetModelInfo(pb.GetModelInfoRequest())).registered_policy.version != version:
        assert time.monotonic() < deadline, f"still serving {info.registered_policy.version!r}, not {version}"
        time.sleep(0.05)
    return info


def _upsert_items(client) -> None:  # type: ignore[no-untyped-def]
    request = pb.UpsertItemsRequest()
    for i in range(ITEMS):
        item = request.items.add(item_id=f"item-{i}", active=True)
        features_to_proto({"category": f"c{i % 3}", "price": 10.0 + 5 * i}, item.features)
    client.catalog.UpsertItems(request)


def _peak(running, client) -> float:  # type: ignore[no-untyped-def]
    """The highest probability of slot 0 over a few decisions: 1/6 for a uniform policy."""
    events = [client.recommender.Recommend(_request(n)).event_id for n in range(8)]
    return max(max(running.engine.log.get_decision(e).slots[0].pmf) for e in events)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("registry")
    make_log(root / "log", events=500)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    _, version, promotion = evaluate_and_register(root / "log", EvaluationConfig(candidates=(EXPLORER,), n_resamples=200), uri)
    assert (version, promotion.promoted) == ("1", True)
    return root / "log", uri


@pytest.mark.slow
def test_reload_policy_and_the_poll_swap_to_the_champion_under_traffic_without_a_failed_rpc(
    start_server: Callable, registry: tuple[Path, str], tmp_path: Path
) -> None:
    log, uri = registry
    running, client = start_server(policy_registry=uri, policy_poll_interval=3600.0)
    _upsert_items(client)
    with Traffic(_recommend_and_reward(client)) as traffic:
        info = _wait_for_version(client, "1")  # the first poll, at start
        assert (info.registered_policy.model_name, info.registered_policy.alias) == (MODEL_NAME, CHAMPION)
        assert info.model_version.startswith("recbandit-policy-v1@") and info.exploration.algorithm == "epsilon"
        assert _peak(running, client) == pytest.approx(1 / ITEMS)  # the explorer: uniform

        _, version, promotion = evaluate_and_register(log, EvaluationConfig(candidates=(LEARNER,), n_resamples=200), uri)
        assert (version, promotion.promoted) == ("2", True)
        assert client.admin.GetModelInfo(pb.GetModelInfoRequest()).registered_policy.version == "1"  # no poll for an hour
        reply = client.admin.ReloadPolicy(pb.ReloadPolicyRequest())
        assert reply.changed and reply.registered_policy.version == "2"
        assert not client.admin.ReloadPolicy(pb.ReloadPolicyRequest()).changed
        assert _peak(running, client) > 0.5  # the learner's model decides now
        time.sleep(0.5)
    assert traffic.failures == [] and len(traffic.results) > 10  # rounds of two RPCs
    assert running.engine.wait_until_learned()
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert info.registered_policy.version == "2" and info.exploration.algorithm == "squarecb"
    learned_online = info.examples_learned
    assert learned_online > 0 and info.model_version == f"recbandit-policy-v2@{learned_online}"
    running.stop(grace=1.0)
    checkpoint = read_checkpoint(tmp_path / "data")
    assert checkpoint.policy == {"model_name": MODEL_NAME, "version": "2", "alias": CHAMPION}
    assert checkpoint.model_id == "recbandit-policy-v2" and checkpoint.examples_learned >= learned_online

    promote(uri, "1", force=True)
    running, client = start_server(policy_registry=uri, policy_poll_interval=0.2)
    with Traffic(_recommend_and_reward(client)) as traffic:
        _wait_for_version(client, "1")
        promote(uri, "2", force=True)
        _wait_for_version(client, "2")
        time.sleep(0.3)
    assert traffic.failures == [] and len(traffic.results) > 10  # rounds of two RPCs


def test_reload_policy_without_a_registry_or_a_champion_names_the_setting(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    with pytest.raises(grpc.RpcError) as error:
        client.admin.ReloadPolicy(pb.ReloadPolicyRequest())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details().startswith("policy_registry: not set")
    assert not client.admin.GetModelInfo(pb.GetModelInfoRequest()).HasField("registered_policy")
    running.stop(grace=1.0)

    running, client = start_server(policy_registry=f"sqlite:///{tmp_path / 'empty.db'}", policy_poll_interval=0.0)
    with pytest.raises(grpc.RpcError) as error:
        client.admin.ReloadPolicy(pb.ReloadPolicyRequest())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == f"policy_registry: no version of {MODEL_NAME} holds the alias @{CHAMPION}"


def test_a_champion_registered_from_another_example_format_is_refused_and_the_model_in_hand_kept(  # type: ignore[no-untyped-def]
    start_server, tmp_path: Path
) -> None:
    root = tmp_path / "registry"
    make_log(root / "log", events=200)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    registered = evaluate_and_register(root / "log", EvaluationConfig(candidates=(EXPLORER,), n_resamples=50), uri,
                                       floor=RegistrationFloor(min_decisions=1, min_ess=0.0))
    assert registered[1] == "1" and registered[2].promoted
    client_of_registry = tracking_client(uri)
    assert client_of_registry.get_model_version(MODEL_NAME, "1").tags["example_format"] == "2"
    client_of_registry.delete_model_version_tag(MODEL_NAME, "1", "example_format")  # as versions were registered before

    running, client = start_server(policy_registry=uri, policy_poll_interval=0.0)
    with pytest.raises(grpc.RpcError) as error:
        client.admin.ReloadPolicy(pb.ReloadPolicyRequest())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details() == (
        f"policy_registry: version 1 of {MODEL_NAME} learned from examples of format 1, and this recbandit builds "
        "format 2: register a policy evaluated by this recbandit (recbandit evaluate)")
    assert not client.admin.GetModelInfo(pb.GetModelInfoRequest()).HasField("registered_policy")
