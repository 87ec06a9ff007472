"""Scheduled re-training of the embeddings: on its interval, only with enough new interactions,
tracked in MLflow, published only when no worse, and followed by every serving process."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from engine.core import Engine
from engine.embeddings import Embeddings
from engine.records import LoggedDecision, Reward, SlotChoice
from engine.types import Candidate
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.app import start
from server.settings import Settings
from server.wire import item_to_proto
from tests.conftest import postgres_schema, stubs
from training.embeddings import EmbeddingConfig, ScheduledTraining, TrainingData, no_worse, planted_world
from training.tracking import default_tracking_uri, tracking_client

CONFIG = EmbeddingConfig(components=16, epochs=10, threads=1, seed=0)


@pytest.fixture(scope="module")
def world() -> TrainingData:
    return planted_world(n_users=300, n_items=120, n_categories=6, per_user=8, seed=0)


def log_interactions(engine: Engine, world: TrainingData, first: int, count: int) -> None:
    """``count`` of the world's interactions as decisions with a click, from number ``first`` on."""
    now = time.time()
    for n in range(first, first + count):
        x = world.interactions[n % len(world.interactions)]
        decision = LoggedDecision(f"e{n}", now, x.user_id, world.user_features[x.user_id], {},
                                  (Candidate(x.item_id),), (SlotChoice(x.item_id, 1.0, (1.0,)),), "v0", False, now + 600)
        engine.log.append_decision(decision)
        engine.log.append_reward(Reward(f"e{n}", x.item_id, "click", 1.0, now + 0.001 * n))


def wait_until(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_the_schedule_trains_only_with_enough_new_interactions_and_tracks_every_training(
    tmp_path: Path, world: TrainingData
) -> None:
    data = tmp_path / "data"
    settings = Settings(host="127.0.0.1", port=0, data_dir=str(data), embeddings_retrain_interval="1s",
                        embeddings_retrain_min_interactions=500, embeddings_poll_interval=0.0)
    trainer = ScheduledTraining(data, CONFIG, tracking_uri=default_tracking_uri(data))
    running = start(settings, embeddings_trainer=trainer)
    client = stubs(running.port)
    try:
        client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[item_to_proto(i) for i in world.items]))
        retraining = running.engine.retraining
        assert retraining is not None
        log_interactions(running.engine, world, 0, 400)
        time.sleep(2.5)
        assert retraining.trainings == 0 and running.engine.embeddings.current is None  # 400 < 500: not due

        log_interactions(running.engine, world, 400, 1600)
        newest = running.engine.log.reader.positive_rewards_since(0.0)
        assert newest == 2000
        assert wait_until(lambda: retraining.trainings >= 1 and retraining._tried_until >= last_reward_ts(running))
        settled = retraining.trainings  # one, or two when the schedule looked while the 1,600 were arriving
        time.sleep(2.5)
        assert retraining.trainings == settled  # nothing new since its data: no training
        first = running.engine.embeddings.current.artifact
        reply = client.recommender.Recommend(pb.RecommendRequest(user_id="user-2"))
        assert reply.model_version.endswith("+" + first.removesuffix(".npz"))  # swapped in: it decides now

        log_interactions(running.engine, world, 2000, 600)
        assert wait_until(lambda: retraining.trainings == settled + 1)
        runs = tracking_client(default_tracking_uri(data)).search_runs(
            [tracking_client(default_tracking_uri(data)).get_experiment_by_name("recbandit-embeddings").experiment_id],
            order_by=["attributes.start_time ASC"])
        assert [r.data.tags["scheduled"] for r in runs] == ["False"] + ["True"] * settled
        second = runs[-1].data
        assert "incumbent_recall_at_10" in second.metrics and "recall_at_10" in second.metrics
        published = second.tags["published"] == "True"
        assert published == no_worse(second.metrics, 10)
        current = running.engine.embeddings.current.artifact
        assert (current != first) == published  # published: swapped in; worse: the first stays
    finally:
        client.channel.close()
        running.stop(grace=1.0)


def test_worse_embeddings_are_not_published(tmp_path: Path, world: TrainingData) -> None:
    """A deliberately weak training (one component, one epoch) against strong embeddings in use."""
    from training.embeddings import train_embeddings

    data = tmp_path / "data"
    engine = Engine(Settings(data_dir=str(data)).engine_config())
    try:
        engine.log.catalog.upsert_items(world.items)
        log_interactions(engine, world, 0, len(world.interactions))
    finally:
        engine.close()
    strong = train_embeddings(world, EmbeddingConfig(components=16, epochs=30, threads=1, seed=0), progress=False)
    weak = ScheduledTraining(data, EmbeddingConfig(components=1, epochs=1, threads=1, seed=0))
    trained = weak.train(strong.embeddings)
    assert trained.path is None and trained.reason.startswith("worse: ")
    assert trained.metrics["recall_at_10"] < trained.metrics["incumbent_recall_at_10"]
    assert not (data / "embeddings").exists()  # nothing written


def test_the_learner_publishes_to_the_store_and_a_replica_swaps_it_in(tmp_path: Path, world: TrainingData) -> None:
    with postgres_schema() as url:
        learner_dir, replica_dir = tmp_path / "learner", tmp_path / "replica"
        config = Settings(data_dir=str(learner_dir), store=url, embeddings_retrain_interval="1h",
                          embeddings_retrain_min_interactions=100).engine_config()
        learner = Engine(dataclasses.replace(config, role="learn"),
                         embeddings_trainer=ScheduledTraining(learner_dir, CONFIG, store=url))
        replica = start(Settings(host="127.0.0.1", port=0, data_dir=str(replica_dir), store=url, role="serve",
                                 model_poll_interval=0.2, embeddings_poll_interval=0.0))
        client = stubs(replica.port)
        try:
            client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[item_to_proto(i) for i in world.items]))
            log_interactions(learner, world, 0, 1000)
            assert learner.retraining is not None
            trained = learner.retraining.run_once()  # what the schedule does at its next look
            assert trained is not None and trained.path is not None
            assert wait_until(lambda: replica.engine.embeddings.current is not None, timeout=20)
            assert replica.engine.embeddings.current.artifact == trained.path.name  # the same name everywhere
            installed = Embeddings.load(replica_dir / "embeddings" / trained.path.name)
            assert installed.metadata["data_until"] == trained_metadata(trained.path)
            reply = client.recommender.Recommend(pb.RecommendRequest(user_id="user-1"))
            assert reply.model_version.endswith("+" + trained.path.stem)
        finally:
            client.channel.close()
            replica.stop(grace=1.0)
            learner.close()


def last_reward_ts(running) -> float:  # type: ignore[no-untyped-def]
    (ts,) = running.engine.log.reader.connection().execute("SELECT MAX(ts) FROM rewards").fetchone()
    return float(ts)


def trained_metadata(path: Path) -> float:
    return float(Embeddings.load(path).metadata["data_until"])
