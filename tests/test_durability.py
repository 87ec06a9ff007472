"""Restart, crash (kill -9) and SIGTERM: nothing acknowledged is lost, learning resumes exactly once."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from engine.checkpoint import read_checkpoint
from engine.eventlog import EventLog
from engine.rewards import RewardRules
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from tests.conftest import stubs
from tests.servers import spawn_serve

pytestmark = pytest.mark.slow


def request(i: int) -> pb.RecommendRequest:
    message = pb.RecommendRequest(user_id=f"u{i % 7}", candidates=[pb.Candidate(item_id=f"i{j}") for j in range(6)])
    message.user_features["segment"].string_value = f"s{i % 3}"
    return message


def play(client, count: int, offset: int = 0) -> None:  # type: ignore[no-untyped-def]
    for i in range(offset, offset + count):
        response = client.recommender.Recommend(request(i))
        client.recommender.Feedback(pb.FeedbackRequest(event_id=response.event_id, reward=float(i % 2)))


def test_a_restart_keeps_the_log_and_what_was_learned(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    play(client, 200)
    assert running.engine.wait_until_learned()
    before = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    running.stop(grace=1.0)
    running, client = start_server()
    after = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert (after.examples_learned, after.model_version) == (200, before.model_version)
    assert running.engine.log.reader.counts()["decisions"] == 200
    play(client, 10, offset=200)
    assert running.engine.wait_until_learned()
    assert running.engine.model_info().examples_learned == 210


def spawn_server(data_dir: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    return spawn_serve(data_dir, "--no-access-log", *flags)


def test_kill_9_during_traffic_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process, port = spawn_server(data, "--checkpoint-interval", "0.3")
    acknowledged_decisions: set[str] = set()
    acknowledged_rewards: set[str] = set()
    stop = threading.Event()

    def storefront(worker: int) -> None:
        client = stubs(port)
        i = worker * 1_000_000
        while not stop.is_set():
            i += 1
            try:
                event = client.recommender.Recommend(request(i)).event_id
                acknowledged_decisions.add(event)
                client.recommender.Feedback(pb.FeedbackRequest(event_id=event, reward=1.0, label="click"))
                acknowledged_rewards.add(event)
            except grpc.RpcError:
                return  # the server is gone
        client.channel.close()

    workers = [threading.Thread(target=storefront, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(2.0)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    stop.set()
    for worker in workers:
        worker.join(timeout=10)
    assert len(acknowledged_rewards) > 100

    log = EventLog(data / "events.db", RewardRules())
    logged = {event.event_id: event for event in log.reader.joined()}
    assert acknowledged_decisions <= logged.keys()
    assert all(logged[e].rewards for e in acknowledged_rewards)
    outcomes = log.reader.counts()["outcomes"]
    log.close()

    process, port = spawn_server(data)
    try:
        client = stubs(port)
        info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
        assert info.examples_learned == outcomes  # checkpoint + re-learned log, none twice
        play(client, 5)
        deadline = time.monotonic() + 10
        while client.admin.GetModelInfo(pb.GetModelInfoRequest()).examples_learned < outcomes + 5:
            assert time.monotonic() < deadline, "learning did not resume"
            time.sleep(0.05)
        client.channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def test_sigterm_drains_checkpoints_and_exits_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process, port = spawn_server(data, "--checkpoint-interval", "3600")
    client = stubs(port)
    play(client, 20)
    client.channel.close()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    assert process.returncode == 0
    assert "stopped; model checkpointed" in data.with_suffix(".log").read_text()
    assert read_checkpoint(data).examples_learned == 20
