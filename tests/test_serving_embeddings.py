"""LightFM embeddings in every decision, through a real gRPC server: retrieval, affinity, cold start, hot swap."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from engine.embeddings import AFFINITY_FEATURES, Embeddings, write_artifact
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.wire import features_to_proto, item_to_proto
from tests.conftest import Traffic
from training.bench_embeddings import reward_with_and_without
from training.embeddings import EmbeddingConfig, TrainingData, planted_world, train_embeddings

CONFIG = EmbeddingConfig(components=16, epochs=10, threads=1, seed=0)


@pytest.fixture(scope="module")
def world() -> TrainingData:
    return planted_world(n_users=300, n_items=120, n_categories=6, per_user=8, seed=0)


@pytest.fixture(scope="module")
def trained(world: TrainingData) -> Embeddings:
    return train_embeddings(world, CONFIG, progress=False).embeddings


def _serve(start_server, tmp_path: Path, world: TrainingData, trained: Embeddings, **overrides):  # type: ignore[no-untyped-def]
    artifact = write_artifact(tmp_path / "data", trained)
    running, client = start_server(embeddings_poll_interval=0.0, **overrides)
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[item_to_proto(i) for i in world.items]))
    return running, client, artifact


def _request(user: int, **fields: object) -> pb.RecommendRequest:
    request = pb.RecommendRequest(user_id=f"user-{user}", **fields)  # type: ignore[arg-type]
    features_to_proto({"segment": f"seg-{user % 6}"}, request.user_features)
    return request


def _category(world: TrainingData) -> dict[str, str]:
    return {item.item_id: str(item.features["category"]) for item in world.items}


def test_recommend_without_candidates_chooses_among_the_users_top_n_minus_exclusions_and_deleted_items(
    start_server, tmp_path, world, trained
) -> None:  # type: ignore[no-untyped-def]
    running, client, artifact = _serve(start_server, tmp_path, world, trained, retrieval_top_n=10)
    embeddings = running.engine.embeddings.current.embeddings
    user = embeddings.user_representation("user-2", {"segment": "seg-2"})
    ranked = [i for i, _ in embeddings.top_n(user, 20)]
    excluded, deleted = ranked[:2], ranked[2:4]
    assert client.catalog.DeleteItems(pb.DeleteItemsRequest(item_ids=deleted)).deleted == 2

    response = client.recommender.Recommend(_request(2, num_results=3, exclude_item_ids=excluded))
    logged = running.engine.log.get_decision(response.event_id)
    expected = [i for i, _ in embeddings.top_n(user, 10, exclude=excluded)]
    assert [c.item_id for c in logged.candidates] == expected == ranked[4:14]
    assert {i.item_id for i in response.items} <= set(expected)
    assert sum(_category(world)[i] == "cat-2" for i in expected) >= 8  # the user's planted taste, not the catalog order
    assert response.model_version == f"{running.engine.model_version}+{artifact.stem}"

    affinity = embeddings.affinity_features(user, expected)
    for candidate, features in zip(logged.candidates, affinity, strict=True):
        assert {k: candidate.features[k] for k in AFFINITY_FEATURES} == features
        assert candidate.features["category"] == _category(world)[candidate.item_id]
    assert logged.candidates[0].features["lightfm_rank"] == 1.0
    assert logged.candidates[0].features["lightfm_affinity"] > 1.0

    other = client.recommender.Recommend(_request(3, num_results=1))  # another user, another top-10
    others = [c.item_id for c in running.engine.log.get_decision(other.event_id).candidates]
    assert sum(_category(world)[i] == "cat-3" for i in others) >= 8
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert info.embeddings.artifact == artifact.name and info.embeddings.components == 16
    assert info.embeddings.items_indexed == 118
    assert info.embeddings.trained_time.seconds == int(trained.metadata["trained_ts"])


def test_an_item_upserted_after_training_is_retrievable_and_an_unknown_user_is_served_from_features(
    start_server, tmp_path, world, trained
) -> None:  # type: ignore[no-untyped-def]
    running, client, _ = _serve(start_server, tmp_path, world, trained, retrieval_top_n=25)
    new_item = pb.Item(item_id="new-2", active=True)
    features_to_proto({"category": "cat-2", "brand": "brand-0"}, new_item.features)
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[new_item]))

    stranger = pb.RecommendRequest(user_id="never-seen", num_results=2)
    features_to_proto({"segment": "seg-2"}, stranger.user_features)
    logged = running.engine.log.get_decision(client.recommender.Recommend(stranger).event_id)
    ids = [c.item_id for c in logged.candidates]
    assert "new-2" in ids
    assert sum(_category(world).get(i, "cat-2") == "cat-2" for i in ids) >= 20
    new = logged.candidates[ids.index("new-2")]
    assert set(AFFINITY_FEATURES) <= set(new.features) and new.features["lightfm_affinity"] > 1.0

    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="new-2", active=False)]))
    logged = running.engine.log.get_decision(client.recommender.Recommend(stranger).event_id)
    assert "new-2" not in [c.item_id for c in logged.candidates]


def test_explicit_candidates_get_affinity_features_and_their_reward_is_learned(start_server, tmp_path, world, trained) -> None:  # type: ignore[no-untyped-def]
    running, client, _ = _serve(start_server, tmp_path, world, trained)
    request = _request(2, num_results=1, candidates=[pb.Candidate(item_id=i) for i in ("item-2", "item-3", "unknown-9")])
    response = client.recommender.Recommend(request)
    logged = running.engine.log.get_decision(response.event_id)
    features = {c.item_id: c.features for c in logged.candidates}
    assert features["item-2"]["lightfm_affinity"] > features["item-3"]["lightfm_affinity"]
    assert features["item-2"]["category"] == "cat-2"  # merged from the catalog
    unknown = features["unknown-9"]  # no known feature: a zero representation, scored by nothing
    assert (unknown["lightfm_cosine"], unknown["lightfm_item_bias"]) == (0.0, 0.0)
    client.recommender.Feedback(pb.FeedbackRequest(event_id=response.event_id, reward=1.0))
    assert running.engine.wait_until_learned()
    assert running.engine.model_info().examples_learned == 1


def test_reload_embeddings_without_an_artifact_names_the_precondition(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    with pytest.raises(grpc.RpcError) as error:
        client.admin.ReloadEmbeddings(pb.ReloadEmbeddingsRequest())
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details().startswith("embeddings: no artifact")
    assert not client.admin.GetModelInfo(pb.GetModelInfoRequest()).HasField("embeddings")


def _recommend_without_candidates(client) -> Callable[[int], str]:  # type: ignore[no-untyped-def]
    """A call for :class:`Traffic`: Recommend without candidates; the artifact that decided it."""

    def call(n: int) -> str:
        response = client.recommender.Recommend(_request(n % 200, num_results=2))
        return response.model_version.split("+")[1]

    return call


def test_hot_swap_by_rpc_under_concurrent_traffic_fails_no_request(
    start_server, tmp_path, world, trained
) -> None:  # type: ignore[no-untyped-def]
    running, client, first = _serve(start_server, tmp_path, world, trained, retrieval_top_n=20)  # no file watch
    other = train_embeddings(world, EmbeddingConfig(components=8, epochs=3, seed=1), progress=False).embeddings
    with Traffic(_recommend_without_candidates(client), threads=4) as traffic:
        time.sleep(0.3)
        second = write_artifact(tmp_path / "data", other)
        reply = client.admin.ReloadEmbeddings(pb.ReloadEmbeddingsRequest())
        assert reply.changed and reply.embeddings.artifact == second.name and reply.embeddings.components == 8
        assert not client.admin.ReloadEmbeddings(pb.ReloadEmbeddingsRequest()).changed
        time.sleep(0.3)
    assert traffic.failures == []
    assert set(traffic.results) == {first.stem, second.stem}
    assert traffic.results[-1] == second.stem


def test_hot_swap_by_file_watch_under_concurrent_traffic_fails_no_request(
    start_server, tmp_path, world, trained
) -> None:  # type: ignore[no-untyped-def]
    first = write_artifact(tmp_path / "data", trained)
    running, client = start_server(embeddings_poll_interval=0.1, retrieval_top_n=20)
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[item_to_proto(i) for i in world.items]))
    other = train_embeddings(world, EmbeddingConfig(components=8, epochs=3, seed=1), progress=False).embeddings
    with Traffic(_recommend_without_candidates(client), threads=4) as traffic:
        time.sleep(0.3)
        second = write_artifact(tmp_path / "data", other)
        deadline = time.monotonic() + 10
        while client.admin.GetModelInfo(pb.GetModelInfoRequest()).embeddings.artifact != second.name:
            assert time.monotonic() < deadline, "the file watch did not swap in the new artifact"
            time.sleep(0.05)
        time.sleep(0.3)
    assert traffic.failures == []
    assert set(traffic.results) == {first.stem, second.stem}
    assert traffic.results[-1] == second.stem
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest()).embeddings
    assert info.items_indexed == 120 and info.components == 8


@pytest.mark.slow
def test_with_embeddings_the_bandit_earns_more_on_the_simulated_storefront() -> None:
    for seed in (0, 1):
        r = reward_with_and_without(seed, train_visits=3000, eval_visits=3000)
        assert r["random"] + 0.15 < r["without"] < r["oracle"]
        assert r["with"] > r["without"] + 0.025, r
        assert r["with_last_half"] > r["without_last_half"] + 0.01, r
