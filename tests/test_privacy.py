"""ForgetUser and pseudonymous user ids, through a real server, a real log and real LightFM training."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import grpc
import pytest

from engine.export import export_jsonl
from engine.privacy import Pseudonymizer, read_key
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from tests.test_api import status_of
from training.embeddings import EmbeddingConfig, train_from_log

CONFIG = EmbeddingConfig(components=4, epochs=3, test_fraction=0.0)
KEY = b"k" * 32


def visit(client, user_id: str, reward: float | None, n: int = 8) -> str:  # type: ignore[no-untyped-def]
    """One Recommend over the catalog for ``user_id``, and a click on what was shown."""
    response = client.recommender.Recommend(pb.RecommendRequest(user_id=user_id))
    if reward is not None:
        client.recommender.Feedback(pb.FeedbackRequest(event_id=response.event_id, reward=reward, label="click"))
    return response.event_id


@pytest.fixture
def storefront(start_server):  # type: ignore[no-untyped-def]
    """A server with 8 catalog items, ten users with a click each, and alice with three visits."""

    def make(**settings: object):  # type: ignore[no-untyped-def]
        running, client = start_server(reward_window="1h", **settings)
        client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id=f"i{j}", active=True, features={"category": pb.FeatureValue(string_value=f"c{j % 2}")})
            for j in range(8)
        ]))
        for u in range(10):
            visit(client, f"u{u}", 1.0)
        alice = [visit(client, "alice", 1.0), visit(client, "alice", 1.0), visit(client, "alice", None)]
        assert running.engine.wait_until_learned()
        return running, client, alice

    return make


def test_forget_user_deletes_the_log_memory_and_embeddings_of_one_user(storefront) -> None:  # type: ignore[no-untyped-def]
    running, client, alice_events = storefront()
    data_dir = Path(running.engine.config.data_dir)
    train_from_log(data_dir, CONFIG, progress=False)
    client.admin.ReloadEmbeddings(pb.ReloadEmbeddingsRequest())
    assert running.engine.embeddings.current.embeddings.is_known_user("alice")

    forgotten = client.admin.ForgetUser(pb.ForgetUserRequest(user_id="alice"))
    assert (forgotten.decisions_deleted, forgotten.rewards_deleted, forgotten.outcomes_deleted) == (3, 2, 2)
    assert forgotten.embedding_removed
    assert running.engine._learner._recent.find(alice_events) == {}  # the unrewarded visit was in memory
    assert not running.engine.embeddings.current.embeddings.is_known_user("alice")
    assert all(event.user_id != "alice" for event in running.engine.log.reader.joined())
    assert running.engine.log.reader.counts()["decisions"] == 10
    code, _ = status_of(client.recommender.Feedback, pb.FeedbackRequest(event_id=alice_events[2], reward=1.0))
    assert code == grpc.StatusCode.NOT_FOUND
    again = client.admin.ForgetUser(pb.ForgetUserRequest(user_id="alice"))
    assert (again.decisions_deleted, again.embedding_removed) == (0, False)

    visit(client, "u1", 1.0)  # learning goes on for everyone else
    assert running.engine.wait_until_learned() and running.engine.model_info().examples_learned == 13
    retrained = train_from_log(data_dir, CONFIG, progress=False).embeddings
    assert not retrained.is_known_user("alice") and retrained.is_known_user("u1")


def test_forget_user_names_a_bad_user_id(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    assert status_of(client.admin.ForgetUser, pb.ForgetUserRequest(user_id="")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "user_id: must not be empty")


def test_pseudonymised_user_ids_never_reach_the_disk(storefront, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "user-id.key"
    key_file.write_bytes(KEY + b"\n")
    running, client, _ = storefront(pseudonymize_user_ids=str(key_file))
    pseudonym = hmac.new(KEY, b"alice", hashlib.sha256).hexdigest()
    assert Pseudonymizer(read_key(key_file))("alice") == pseudonym
    data_dir = Path(running.engine.config.data_dir)
    train_from_log(data_dir, CONFIG, progress=False)
    client.admin.Checkpoint(pb.CheckpointRequest())
    export = tmp_path / "export.jsonl"
    export_jsonl(running.engine.log.reader, export)
    users = {json.loads(line)["user_id"] for line in export.read_text().splitlines()}
    assert pseudonym in users and len(users) == 11 and all(len(u) == 64 for u in users)
    for path in [export, *data_dir.rglob("*")]:
        if path.is_file():
            content = path.read_bytes()
            assert b"alice" not in content and b'"u1"' not in content, path

    forgotten = client.admin.ForgetUser(pb.ForgetUserRequest(user_id="alice"))  # the raw id, as Recommend had it
    assert forgotten.decisions_deleted == 3
    assert pseudonym not in {e.user_id for e in running.engine.log.reader.joined()}


def test_a_short_pseudonymisation_key_is_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "short.key"
    key_file.write_bytes(b"too short\n")
    with pytest.raises(ValueError, match="at least 32 bytes, got 9"):
        read_key(key_file)
