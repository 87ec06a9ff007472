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
from training.embeddings import EmbeddingConfig, ScheduledTraining, TrainingData, planted_world
from training.tracking import default_tracking_uri, tracking_client

CONFIG = EmbeddingConfig(components=16, epochs=10, threads=1, seed=0)


@pytest.fixture(scope="module")
def world() -> TrainingData:
    return planted_world(n_users=300, n_items=120, n_categories=6, per_user=8, seed=0)


def log_interactions(engine: Engine, world: TrainingData, first: int, count: int) -> list[float]:
    """``count`` of the world's interactions as decisions with a click, from number ``first`` on;
    returns the clicks' times."""
    now, times = time.time(), []
    for n in range(first, first + count):
        x = world.interactions[n % len(world.interactions)]
        decision = LoggedDecision(f"e{n}", now, x.user_id, world.user_features[x.user_id], {},
                                  (Candidate(x.item_id),), (SlotChoice(x.item_id, 1.0, (1.0,)),), "v0", False, now + 600)
        engine.log.append_decision(decision)
        times.append(now + 0.001 * n)
        engine.log.append_reward(Reward(f"e{n}", x.item_id, "click", 1.0, times[-1]))
    return times


def wait_until(predicate, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_the_schedule_trains_on_its_interval_and_swaps_the_embeddings_in(tmp_path: Path, world: TrainingData) -> None:
    data = tmp_path / "data"
    settings = Settings(host="127.0.0.1", port=0, data_dir=str(data), embeddings_retrain_interval="1s",
                        embeddings_retrain_min_interactions=500, embeddings_poll_interval=0.0)
    running = start(settings, embeddings_trainer=ScheduledTraining(data, CONFIG, tracking_uri=default_tracking_uri(data)))
    client = stubs(running.port)
    try:
        client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[item_to_proto(i) for i in world.items]))
        retraining = running.engine.retraining
        assert retraining is not None and running.engine.embeddings.current is None
        log_interactions(running.engine, world, 0, 800)
        assert wait_until(lambda: retraining.published)  # a look of the schedule found 500 or more
        name = retraining.published[0]
        assert running.engine.embeddings.current.artifact == name
        reply = client.recommender.Recommend(pb.RecommendRequest(user_id="user-2"))
        assert reply.model_version.endswith("+" + name.removesuffix(".npz"))  # swapped in: it decides now
        tracking = tracking_client(default_tracking_uri(data))
        (run, *_) = tracking.search_runs([tracking.get_experiment_by_name("recbandit-embeddings").experiment_id])
        assert run.data.tags["scheduled"] == "True" and run.data.tags["published"] == "True"
    finally:
        client.channel.close()
        running.stop(grace=1.0)


def test_a_training_is_due_only_with_enough_interactions_newer_than_the_last(tmp_path: Path, world: TrainingData) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=str(data), embeddings_retrain_interval="1h", embeddings_retrain_min_interactions=500)
    engine = Engine(settings.engine_config(), embeddings_trainer=ScheduledTraining(data, CONFIG))
    try:
        engine.log.catalog.upsert_items(world.items)
        retraining = engine.retraining
        assert retraining is not None
        log_interactions(engine, world, 0, 400)
        assert retraining.run_once() is None  # 400 < 500
        times = log_interactions(engine, world, 400, 1600)
        first = retraining.run_once()
        assert first is not None and first.data_until == times[-1] and first.embeddings is not None
        assert retraining.run_once() is None  # nothing new since the data it learned from
        log_interactions(engine, world, 2000, 300)
        assert retraining.run_once() is None  # 300 new < 500
        log_interactions(engine, world, 2300, 300)
        second = retraining.run_once()
        assert second is not None and retraining.trainings == 2
        assert second.metrics["fresh_test_interactions"] >= 100  # judged on what the embeddings in use never saw
        assert {"challenger_recall_at_10", "incumbent_recall_at_10"} <= set(second.metrics)
        assert (second.embeddings is not None) == (len(retraining.published) == 2)
        assert engine.embeddings.current.artifact == retraining.published[-1]
    finally:
        engine.close()


def judged(tmp_path: Path, world: TrainingData, incumbent_config: EmbeddingConfig,
           challenger_config: EmbeddingConfig):  # type: ignore[no-untyped-def]
    """A log of the world's interactions; embeddings in use trained on its first half; a training of
    ``challenger_config`` on all of it, judged against them."""
    from training.embeddings import train_embeddings

    data = tmp_path / "data"
    engine = Engine(Settings(data_dir=str(data)).engine_config())
    try:
        engine.log.catalog.upsert_items(world.items)
        half = len(world.interactions) // 2
        times = log_interactions(engine, world, 0, len(world.interactions))
    finally:
        engine.close()
    early = TrainingData(world.interactions[:half], world.user_features, world.items)
    incumbent = train_embeddings(early, incumbent_config, progress=False).embeddings
    incumbent.metadata["data_until"] = times[half - 1]  # as if trained from this log up to there
    return ScheduledTraining(data, challenger_config).train(incumbent), data


def test_better_embeddings_are_published_and_worse_are_not(tmp_path: Path, world: TrainingData) -> None:
    weak, strong = EmbeddingConfig(components=1, epochs=1, threads=1, seed=0), CONFIG
    better, _ = judged(tmp_path / "better", world, incumbent_config=weak, challenger_config=strong)
    assert better.embeddings is not None and better.reason.startswith("no worse: ")
    assert better.metrics["challenger_recall_at_10"] > better.metrics["incumbent_recall_at_10"]
    worse, data = judged(tmp_path / "worse", world, incumbent_config=strong, challenger_config=weak)
    assert worse.embeddings is None and worse.reason.startswith("worse: ")
    assert worse.metrics["challenger_recall_at_10"] < worse.metrics["incumbent_recall_at_10"]
    assert worse.metrics["fresh_test_interactions"] == worse.metrics["test_interactions"]  # the second half's newest
    assert not (data / "embeddings").exists()  # a scheduled training writes nothing itself


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
            assert trained is not None and trained.embeddings is not None
            (name,) = learner.retraining.published
            assert learner.embeddings.current.artifact == name
            assert wait_until(lambda: replica.engine.embeddings.current is not None, timeout=20)
            assert replica.engine.embeddings.current.artifact == name  # the same name everywhere
            installed = Embeddings.load(replica_dir / "embeddings" / name)
            assert installed.metadata["data_until"] == trained.data_until
            reply = client.recommender.Recommend(pb.RecommendRequest(user_id="user-1"))
            assert reply.model_version.endswith("+" + name.removesuffix(".npz"))

            assert learner.retraining.term is not None  # its publishes are fenced (tests/test_eventlog.py)
        finally:
            client.channel.close()
            replica.stop(grace=1.0)
            learner.close()


def last_reward_ts(running) -> float:  # type: ignore[no-untyped-def]
    (ts,) = running.engine.log.reader.connection().execute("SELECT MAX(ts) FROM rewards").fetchone()
    return float(ts)
