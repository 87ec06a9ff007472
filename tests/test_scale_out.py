"""Beyond one process, with real processes: ``serve --processes 2`` on SQLite, and replicas with a
learner and a standby on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from engine.eventlog import EventLog
from engine.rewards import RewardRules
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from tests.conftest import Traffic, postgres_schema, stubs
from tests.servers import ROOT, spawn_serve

pytestmark = pytest.mark.slow


def call(port: int, method: Callable[[object], object]) -> object:
    """One call over a connection of its own, so that the kernel may hand it to any serving process."""
    client = stubs(port)
    try:
        return method(client)
    finally:
        client.channel.close()


def examples_learned(port: int) -> int:
    return int(call(port, lambda c: c.admin.GetModelInfo(pb.GetModelInfoRequest())).examples_learned)  # type: ignore[attr-defined]


def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


def children(pid: int) -> dict[int, str]:
    """The child processes of ``pid``, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
            except (OSError, ValueError):
                continue
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_two_serving_processes_and_a_learner_share_one_port_one_log_and_one_model(tmp_path: Path) -> None:
    data = tmp_path / "data"
    supervisor, port = spawn_serve(data, "--processes", "2", "--reward-window", "1s")
    try:
        call(port, lambda c: c.catalog.UpsertItems(pb.UpsertItemsRequest(
            items=[pb.Item(item_id=f"sku-{i}", active=True) for i in range(4)])))
        time.sleep(1.0)  # a catalog write reaches every process within a second
        for i in range(40):
            reply = call(port, lambda c: c.recommender.Recommend(pb.RecommendRequest(user_id=f"u{i % 5}", event_id=f"e{i}")))
            if i % 2 == 0:
                call(port, lambda c: c.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=1.0)))  # type: ignore[attr-defined]
        serving = [pid for pid, line in children(supervisor.pid).items() if line.split()[-1] == "serve"]
        assert len(serving) == 2
        eventually(lambda: all(examples_learned(port) == 40 for _ in range(6)))  # every process follows the learner
        call(port, lambda c: c.catalog.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="new", active=True)])))
        time.sleep(1.0)
        for _ in range(8):  # connections of their own: both processes know the new item
            reply = call(port, lambda c: c.recommender.Recommend(pb.RecommendRequest(
                user_id="u1", exclude_item_ids=[f"sku-{i}" for i in range(4)])))
            assert [item.item_id for item in reply.items] == ["new"]  # type: ignore[attr-defined]

        killed = serving[0]
        with Traffic(lambda n: call(port, lambda c: c.recommender.Recommend(
                pb.RecommendRequest(user_id=f"load-{n}", event_id=f"load-{n}")))) as traffic:
            time.sleep(1.0)
            os.kill(killed, signal.SIGKILL)
            time.sleep(2.5)
            before = len(traffic.results)
            time.sleep(1.0)
            assert len(traffic.results) > before  # the others keep serving
        acknowledged = {reply.event_id for reply in traffic.results}  # type: ignore[attr-defined]
        assert all(isinstance(error, grpc.RpcError) for error in traffic.failures)
        eventually(lambda: len([p for p, line in children(supervisor.pid).items() if line.split()[-1] == "serve"]) == 2)  # restarted
    finally:
        stop(supervisor)
    log = EventLog(data / "events.db", RewardRules())
    try:
        assert acknowledged <= set(log.decisions(acknowledged))  # 0 acknowledged events lost
    finally:
        log.close()


def spawn_learner(data_dir: Path, url: str, log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "wb") as sink:
        return subprocess.Popen([sys.executable, "-m", "server.cli", "learn", "--data-dir", str(data_dir), "--store", url,
                                 "--reward-window", "1s"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as schema_url:
        yield schema_url


def test_replicas_agree_and_a_standby_learner_resumes_exactly_where_the_dead_one_published(url: str, tmp_path: Path) -> None:
    import psycopg

    active = spawn_learner(tmp_path / "learner-a", url, tmp_path / "learner-a.log")
    eventually(lambda: "learning (model" in (tmp_path / "learner-a.log").read_text())
    standby = spawn_learner(tmp_path / "learner-b", url, tmp_path / "learner-b.log")
    replicas = [spawn_serve(tmp_path / f"replica-{k}", "--role", "serve", "--store", url, "--reward-window", "1s")
                for k in (1, 2)]
    (one, port_one), (two, port_two) = replicas
    try:
        eventually(lambda: "standby" in (tmp_path / "learner-b.log").read_text())
        call(port_one, lambda c: c.catalog.UpsertItems(pb.UpsertItemsRequest(
            items=[pb.Item(item_id=f"sku-{i}", active=True) for i in range(4)])))
        time.sleep(1.0)
        first = call(port_one, lambda c: c.recommender.Recommend(pb.RecommendRequest(user_id="u1", event_id="same")))
        again = call(port_two, lambda c: c.recommender.Recommend(pb.RecommendRequest(user_id="u1", event_id="same")))
        assert again.items == first.items  # type: ignore[attr-defined]  # one decision, enforced by the store
        for i in range(30):  # decided on one replica, rewarded on the other
            reply = call(port_one, lambda c: c.recommender.Recommend(pb.RecommendRequest(user_id=f"u{i % 3}", event_id=f"e{i}")))
            call(port_two, lambda c: c.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=1.0)))  # type: ignore[attr-defined]
        eventually(lambda: examples_learned(port_two) == 31)
        active.send_signal(signal.SIGKILL)
        active.wait()
        for i in range(30, 50):  # serving goes on with the last snapshot
            reply = call(port_two, lambda c: c.recommender.Recommend(pb.RecommendRequest(user_id=f"u{i % 3}", event_id=f"e{i}")))
            call(port_one, lambda c: c.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=1.0)))  # type: ignore[attr-defined]
        eventually(lambda: "took the learner lease" in (tmp_path / "learner-b.log").read_text())
        eventually(lambda: examples_learned(port_one) == 51 and examples_learned(port_two) == 51)
        with psycopg.connect(url) as conn:
            (outcomes,) = conn.execute("SELECT COUNT(*) FROM outcomes").fetchone()
            (decisions,) = conn.execute("SELECT COUNT(*) FROM decisions WHERE event_id = 'same'").fetchone()
        assert outcomes == 51 and decisions == 1  # every slot learned once: nothing twice, nothing skipped
    finally:
        for process in (one, two, active, standby):
            stop(process)


def test_a_learner_whose_lease_connection_is_cut_takes_it_again_or_stops_never_two_learners(url: str, tmp_path: Path) -> None:
    import psycopg

    tagged = f"{url}&application_name=recbandit-learner-a-{os.getpid()}"
    active = spawn_learner(tmp_path / "learner-a", tagged, tmp_path / "learner-a.log")
    eventually(lambda: "learning (model" in (tmp_path / "learner-a.log").read_text())
    standby = spawn_learner(tmp_path / "learner-b", url, tmp_path / "learner-b.log")
    try:
        eventually(lambda: "standby" in (tmp_path / "learner-b.log").read_text())
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         (f"recbandit-learner-a-{os.getpid()}",))
        # Whoever looks first has the lease: the cut learner takes it again, or it exits (code 3) and
        # the standby takes it over. Never both.
        retook = "took the lease again"
        eventually(lambda: retook in (tmp_path / "learner-a.log").read_text() or active.poll() is not None)
        if active.poll() is None:
            time.sleep(3.0)  # longer than a standby's poll and grace
            assert active.poll() is None and "took the learner lease" not in (tmp_path / "learner-b.log").read_text()
        else:
            assert active.wait() == 3 and "the learner lease of the store ended" in (tmp_path / "learner-a.log").read_text()
            eventually(lambda: "took the learner lease" in (tmp_path / "learner-b.log").read_text())
    finally:
        for process in (active, standby):
            stop(process)


def test_serving_processes_refused_at_start_stop_the_supervisor_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:  # a listener without SO_REUSEPORT holds the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--processes", "2", "--port", str(port),
                               "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=90)
    assert done.returncode == 2
    assert "refused to start" in done.stderr and "Traceback" not in done.stderr.split("refused to start")[-1]


def test_the_learner_serves_the_learning_metrics(tmp_path: Path) -> None:
    import urllib.request

    from server.bench import free_port

    data = tmp_path / "data"
    port = free_port()
    with open(tmp_path / "learner.log", "wb") as sink:
        learner = subprocess.Popen([sys.executable, "-m", "server.cli", "learn", "--data-dir", str(data),
                                    "--metrics-port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        eventually(lambda: "learning (model" in (tmp_path / "learner.log").read_text())
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "recbandit_learner_lag_seconds" in text and "recbandit_model_age_seconds" in text
    finally:
        stop(learner)
