"""--store postgresql://…: a real server keeps its event log and catalog in PostgreSQL.

Each test has a schema of its own in the test database (``tests.conftest.postgres_schema``). The
log's own behaviour on both backends is ``tests/test_eventlog.py``'s ``store`` tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.errors import ConfigurationError, StartupRefused
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.app import start
from server.settings import Settings
from tests.conftest import execute, postgres_schema, stubs
from tests.test_api import recommend_request


@pytest.fixture
def url() -> Iterator[str]:
    with postgres_schema() as schema_url:
        yield schema_url


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def decide(client: SimpleNamespace, event_ids: list[str]) -> None:
    """One Recommend (``tests.test_api.recommend_request``) per event id."""
    for event_id in event_ids:
        request = recommend_request()
        request.event_id = event_id
        client.recommender.Recommend(request)


def test_a_server_on_postgresql_decides_logs_learns_and_resumes_where_it_stopped(url: str, tmp_path: Path) -> None:
    settings = Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data"), store=url, reward_window="1s")
    running = start(settings)
    client = stubs(running.port)
    try:
        client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id=f"sku-{i}", active=True) for i in range(5)]))
        event_ids = []
        for i in range(40):
            request = pb.RecommendRequest(user_id=f"u{i % 4}", event_id=f"e{i}",
                                          candidates=[pb.Candidate(item_id=f"sku-{k}") for k in range(5)])
            reply = client.recommender.Recommend(request)
            event_ids.append(reply.event_id)
            if i % 2 == 0:
                client.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=1.0))
        deadline = time.monotonic() + 20
        while running.engine.model_info().examples_learned < 40:  # the windows close after 1 s: 40 outcomes
            assert time.monotonic() < deadline, running.engine.model_info()
            time.sleep(0.1)
        decided = running.engine.log.decisions(event_ids)
    finally:
        client.channel.close()
        running.stop(grace=1.0)
    assert rows(url, "SELECT COUNT(*), SUM(closed) FROM decisions") == [(40, 40)]
    assert rows(url, "SELECT COUNT(*) FROM rewards") == [(20,)]
    assert rows(url, "SELECT COUNT(*), SUM(reward) FROM outcomes") == [(40, 20.0)]
    assert rows(url, "SELECT COUNT(*) FROM item_versions") == [(5,)]
    assert all(len(d.candidates) == 5 for d in decided.values())

    again = start(settings)  # the same data directory's checkpoint and the same store
    try:
        info = again.engine.model_info()
        assert info.examples_learned == 40 and info.examples_pending == 0  # nothing learned twice
        assert again.engine.log.get_decision("e7") == decided["e7"]
    finally:
        again.stop(grace=1.0)


def test_a_second_server_on_the_same_store_is_refused_in_one_line(url: str, tmp_path: Path) -> None:
    first = start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "one"), store=url))
    try:
        with pytest.raises(StartupRefused, match="another recbandit learner \\(or server\\) learns from the store"):
            start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "two"), store=url))
    finally:
        first.stop(grace=1.0)
    start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "two"), store=url)).stop(grace=1.0)


def test_retention_deletes_from_postgresql_too(url: str, tmp_path: Path) -> None:
    running = start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data"), store=url,
                             reward_window="1s", retention="2s"))
    client = stubs(running.port)
    try:
        decide(client, [f"old-{i}" for i in range(30)])
        deadline = time.monotonic() + 20
        while rows(url, "SELECT COUNT(*) FROM decisions") != [(0,)]:  # windows close (1 s), then 2 s of retention
            assert time.monotonic() < deadline, rows(url, "SELECT COUNT(*) FROM decisions")
            time.sleep(0.2)
        assert rows(url, "SELECT COUNT(*) FROM outcomes") == [(0,)]
        assert running.engine.model_info().examples_learned == 30
    finally:
        client.channel.close()
        running.stop(grace=1.0)


def test_the_store_url_is_checked_and_its_password_never_shown(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="^store: must be a postgresql://"):
        Settings(store="mysql://db/x").engine_config()
    with_password = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")  # trust auth ignores it
    running = start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data"), store=with_password))
    try:
        assert "hunter2" not in running.engine.log.path and "***" in running.engine.log.path
    finally:
        running.stop(grace=1.0)


def test_cut_connections_answer_unavailable_fast_and_recover_without_a_restart(url: str, tmp_path: Path) -> None:
    import os

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    name = f"recbandit-test-{os.urandom(4).hex()}"  # only this server's connections are cut
    running = start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data"),
                             store=f"{url}&application_name={name}"))
    client = stubs(running.port)
    health = health_pb2_grpc.HealthStub(client.channel)
    try:
        client.recommender.Recommend(recommend_request())
        cut = rows(url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'")
        assert len(cut) >= 2  # the writer's connection and a reader's at least
        codes = []
        for i in range(20):
            request = recommend_request()
            request.event_id = f"after-cut-{i}"  # read first: the readers' connections are cut too
            began = time.monotonic()
            try:
                client.recommender.Recommend(request)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                codes.append(error.code())
                assert time.monotonic() - began < 5.0  # fast, not a hang
            time.sleep(0.05)
        assert grpc.StatusCode.UNAVAILABLE in codes and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
        assert codes[-1] == grpc.StatusCode.OK  # connected again, without a restart
        serving = health_pb2.HealthCheckResponse.SERVING
        deadline = time.monotonic() + 15
        while health.Check(health_pb2.HealthCheckRequest()).status != serving:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        client.channel.close()
        running.stop(grace=1.0)


def test_export_log_reads_a_postgresql_store(url: str, tmp_path: Path) -> None:
    import json

    from server.cli import main

    running = start(Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data"), store=url))
    client = stubs(running.port)
    try:
        decide(client, ["e0", "e1", "e2"])
    finally:
        client.channel.close()
        running.stop(grace=1.0)
    out = tmp_path / "events.jsonl"
    assert main(["export-log", "--store", url, "--data-dir", str(tmp_path / "elsewhere"), "--out", str(out)]) == 0
    assert [json.loads(line)["event_id"] for line in out.read_text().splitlines()] == ["e0", "e1", "e2"]


def test_a_transaction_the_database_undoes_for_a_deadlock_runs_again_and_health_stays(url: str) -> None:
    """Two writers lock two rows in opposite orders: PostgreSQL undoes one transaction to break the
    deadlock, and its writer runs it again, so both callers get their commit."""
    import threading

    from engine.groupcommit import GroupCommitWriter
    from engine.storage import open_database

    execute(url, "CREATE TABLE pair (name TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    execute(url, "INSERT INTO pair VALUES ('x', 0), ('y', 0)")
    database = open_database(url)
    connections = [database.connect(writer=True) for _ in range(2)]
    writers = [GroupCommitWriter(conn, begin=database.begin, storage_failure=database.storage_failure,
                                 rolled_back=database.rolled_back) for conn in connections]
    both_hold_one = threading.Barrier(2, timeout=20)

    def crossing(first: str, second: str):  # type: ignore[no-untyped-def]
        runs: list[int] = []

        def operation(conn):  # type: ignore[no-untyped-def]
            runs.append(1)
            conn.execute("UPDATE pair SET n = n + 1 WHERE name = ?", (first,))
            if len(runs) == 1:
                both_hold_one.wait()  # the first run of each: now each waits for the other's row
            conn.execute("UPDATE pair SET n = n + 1 WHERE name = ?", (second,))
            return len(runs)

        return operation

    results: dict[int, object] = {}

    def submit(i: int, first: str, second: str) -> None:
        try:
            results[i] = writers[i].submit(crossing(first, second))
        except Exception as error:  # what a caller would get
            results[i] = error

    threads = [threading.Thread(target=submit, args=(0, "x", "y")), threading.Thread(target=submit, args=(1, "y", "x"))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert all(isinstance(r, int) for r in results.values()), results  # nobody got an error
        assert sorted(results.values()) == [1, 2]  # one committed at once, the deadlock's victim on its second run
        assert all(writer.healthy for writer in writers)
        assert rows(url, "SELECT name, n FROM pair ORDER BY name") == [("x", 2), ("y", 2)]  # each update once
    finally:
        for writer, conn in zip(writers, connections, strict=True):
            writer.close()
            conn.close()
