"""The edge through a real server: undecodable and oversized requests, bounded caches, calls in
flight, deadlines, undelivered decisions, event ids, and storage failures."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.cache import BoundedCache
from server import converters
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.bench import InProcessContext, free_port
from server.bench_edge import resident_mb
from server.edge import undecodable
from server.servicers import LARGE_REQUEST_WORK, RecommenderServicer
from tests.test_api import recommend_request, status_of
from tests.test_metrics import scrape

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def raw_call(client, method: str, data: bytes, **kwargs):  # type: ignore[no-untyped-def]
    return client.channel.unary_unary(method)(data, **kwargs)


class WriteLock:
    """Holds SQLite's write lock on the server's event log from another connection: commits wait."""

    def __init__(self, running) -> None:  # type: ignore[no-untyped-def]
        self._conn = sqlite3.connect(running.engine.log.path, isolation_level=None, check_same_thread=False)

    def __enter__(self) -> WriteLock:
        self._conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.execute("ROLLBACK")
        self._conn.close()


def test_undecodable_bytes_get_invalid_argument_without_a_traceback(server, caplog) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    caplog.set_level(logging.INFO)
    before = undecodable.total
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            with pytest.raises(grpc.RpcError) as error:
                raw_call(client, f"/{service.full_name}/{method.name}", b"\x0a\x05ab")  # field 1, cut short
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error.value.details() == f"request could not be decoded as {method.input_type.name}"
    methods = sum(len(s.methods) for s in pb.DESCRIPTOR.services_by_name.values())
    assert undecodable.total - before == methods
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert sum("could not be decoded" in r.getMessage() for r in caplog.records) <= 1  # counted, rate-limited


def test_oversized_requests_are_refused_and_nothing_is_cached(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    converters._candidates.clear()
    long_id = recommend_request()
    long_id.candidates[0].item_id = "x" * 1_000_000
    for call in range(350):
        if call == 50:  # by now the allocators' pools for megabyte messages are warm
            before = resident_mb()
        code, details = status_of(client.recommender.Recommend, long_id)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "candidates[0].item_id: must be at most 256 characters, got 1000000"
    assert converters._candidates.bytes == 0  # refused candidates never enter the cache
    assert resident_mb() - before < 150  # each kept would be 300 MB; the allocators alone swing by tens of MB
    many = pb.RecommendRequest(user_id="u", candidates=[pb.Candidate(item_id=f"i{j}") for j in range(80_000)])
    assert status_of(client.recommender.Recommend, many) == (
        grpc.StatusCode.INVALID_ARGUMENT, "candidates: must have at most 500 entries, got 80000")
    too_big = pb.RecommendRequest(user_id="u", candidates=[pb.Candidate(item_id=f"i{j}") for j in range(200_000)])
    assert status_of(client.recommender.Recommend, too_big)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert running.engine.log.reader.counts()["decisions"] == 0


def test_echoed_names_and_ids_are_cut_short(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    request = recommend_request()
    request.user_features["n" * 100_000].CopyFrom(pb.FeatureValue())
    code, details = status_of(client.recommender.Recommend, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 200
    assert details.startswith("user_features['" + "n" * 40 + "'… (100000 characters)]: must set one of")
    code, details = status_of(client.recommender.Feedback, pb.FeedbackRequest(event_id="e" * 200, reward=1))
    assert code == grpc.StatusCode.NOT_FOUND and len(details) < 120 and "(200 characters)" in details


def test_caches_are_bounded_in_entries_and_bytes() -> None:
    cache: BoundedCache[int, str] = BoundedCache(max_entries=50, max_bytes=3000)
    for j in range(100):
        cache.put(j, "x" * 100, 306)
        assert cache.bytes <= 3000 and len(cache) <= 9
    assert cache.get(99) == "x" * 100 and cache.get(0) is None
    cache.put(100, "y", 3001)  # one entry over the bound is kept alone, and the next starts over
    assert len(cache) == 1 and cache.get(100) == "y"
    counted: BoundedCache[int, int] = BoundedCache(max_entries=3, max_bytes=1 << 20)
    for j in range(7):
        counted.put(j, j, 1)
    assert len(counted) == 1 and counted.get(6) == 6


def test_a_cache_counts_an_entry_it_replaces_once() -> None:
    cache: BoundedCache[str, int] = BoundedCache(max_entries=10, max_bytes=1000)
    cache.put("a", 1, 100)
    for j in range(50):  # one user's portrait rewritten, again and again
        cache.put("b", j, 100)
    assert cache.bytes == 200 and cache.get("a") == 1 and cache.get("b") == 49
    cache.pop("a")
    assert cache.bytes == 100 and len(cache) == 1 and cache.get("a") is None


def test_event_ids_are_random_and_a_reused_id_reveals_nothing(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    ids = [client.recommender.Recommend(recommend_request()).event_id for _ in range(20)]
    assert all(len(e) == 32 and int(e, 16) >= 0 for e in ids)
    assert len({e[:8] for e in ids}) == 20 and len({e[-8:] for e in ids}) == 20  # no shared prefix, no counter
    taken = recommend_request(event_id="order-1234")
    client.recommender.Recommend(taken)
    taken.user_id = "someone-else"
    code, details = status_of(client.recommender.Recommend, taken)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert details == "event_id: 'order-1234' is in use by another request: choose another event_id"


def test_calls_past_max_in_flight_are_refused_at_once(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(max_in_flight=4)
    with WriteLock(running), futures.ThreadPoolExecutor(12) as pool:
        calls = [pool.submit(client.recommender.Recommend.future, recommend_request(event_id=f"e{j}"), timeout=30)
                 for j in range(12)]
        pending = [c.result() for c in calls]
        _wait_for(lambda: sum(c.done() for c in pending) >= 8, timeout=20)
        time.sleep(0.3)
        refused = [c for c in pending if c.done()]
        assert len(refused) == 8  # the other four wait for the log
        assert {c.code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    accepted = [c for c in pending if c not in refused]
    assert all(c.result().event_id for c in accepted)
    assert running.engine.log.reader.counts()["decisions"] == 4


def test_a_call_whose_deadline_passed_is_not_started(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    busy = threading.Event()

    def hold_the_loop() -> None:
        busy.set()
        time.sleep(0.6)

    running.loop.loop.call_soon_threadsafe(hold_the_loop)  # the server is busy for 0.6 s
    assert busy.wait(10)
    calls = [client.recommender.Recommend.future(recommend_request(event_id=f"late-{j}"), timeout=0.2)
             for j in range(20)]
    assert {c.code() for c in calls} == {grpc.StatusCode.DEADLINE_EXCEEDED}
    time.sleep(0.3)
    client.recommender.Recommend(recommend_request(event_id="on-time"))
    assert running.engine.log.reader.counts()["decisions"] == 1


def test_the_servicer_refuses_a_call_whose_deadline_passed_before_any_work(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server

    class Expired(InProcessContext):
        def time_remaining(self) -> float:
            return 0.0

    with pytest.raises(RuntimeError, match="^DEADLINE_EXCEEDED: the deadline passed before the call started$"):
        asyncio.run(RecommenderServicer(running.engine).Recommend(recommend_request(), Expired()))
    assert running.engine.log.reader.counts()["decisions"] == 0


def test_a_decision_its_caller_never_got_is_not_learned_by_default(start_server) -> None:  # type: ignore[no-untyped-def]
    metrics_port = free_port()
    running, client = start_server(reward_window="1s", default_reward=0.0, metrics_port=metrics_port)
    client.catalog.ListItems(pb.ListItemsRequest())  # the channel is ready before the clock matters
    with WriteLock(running):
        late = client.recommender.Recommend.future(recommend_request(event_id="gone"), timeout=1.0)
        assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    shown = client.recommender.Recommend(recommend_request(event_id="shown"))
    deadline = time.monotonic() + 10
    while not running.engine.log.get_decision("gone") or not running.engine.log.get_decision("gone").undelivered:
        assert time.monotonic() < deadline, "the late decision was never marked undelivered"
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while running.engine.model_info().examples_learned < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # one more pass of the window closer
    outcomes = {o.event_id: o.source for o in running.engine.log.final_outcomes_after(0)}
    assert outcomes == {shown.event_id: "default"}
    exported = {e.event_id: e.decision.undelivered for e in running.engine.log.reader.joined()}
    assert exported == {"gone": True, "shown": False}
    metrics = scrape(metrics_port)
    assert metrics[("recbandit_undelivered_decisions_total", ())] == 1
    assert metrics[("recbandit_outcomes_learned_total", (("source", "default"),))] == 1


def test_a_retry_that_fetches_an_undelivered_decision_delivers_it(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    client.catalog.ListItems(pb.ListItemsRequest())  # the channel is ready before the clock matters
    with WriteLock(running):
        late = client.recommender.Recommend.future(recommend_request(event_id="retried"), timeout=1.0)
        assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while not (running.engine.log.get_decision("retried") or _Nothing).undelivered:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = client.recommender.Recommend(recommend_request(event_id="retried"))
    assert again.event_id == "retried"
    assert not running.engine.log.get_decision("retried").undelivered


class _Nothing:
    undelivered = False


def test_storage_failures_turn_health_not_serving_until_a_write_succeeds(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    health = health_pb2_grpc.HealthStub(client.channel)
    client.recommender.Recommend(recommend_request())
    writer = running.engine.log._writer._connection
    (pages,) = writer.execute("PRAGMA page_count").fetchone()
    writer.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    big = recommend_request(n=400)
    code, details = status_of(client.recommender.Recommend, big)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert details == "the event log cannot be written now; retry later (the server log has the cause)"
    _wait_for(lambda: health.Check(health_pb2.HealthCheckRequest()).status == NOT_SERVING)
    time.sleep(1.2)  # small writes (probes, window closing) fit, but a failure holds health for 2 s
    assert health.Check(health_pb2.HealthCheckRequest()).status == NOT_SERVING
    writer.execute("PRAGMA max_page_count = 1073741823")  # space again
    _wait_for(lambda: health.Check(health_pb2.HealthCheckRequest()).status == SERVING)  # the probe wrote
    assert client.recommender.Recommend(big).event_id
    assert running.engine.log.reader.counts()["decisions"] == 2


def _wait_for(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_large_request_is_decided_beside_small_ones(server) -> None:  # type: ignore[no-untyped-def]
    """A large Recommend goes to a worker thread (what that spares the others is in make bench)."""
    running, client = server
    large = recommend_request(n=450)
    for candidate in large.candidates:
        for k in range(20):
            candidate.features[f"f{k}"].string_value = "v" * 20
    assert converters.decision_work(large) > LARGE_REQUEST_WORK
    finished: list[str] = []
    worker = threading.Thread(target=lambda: finished.append(client.recommender.Recommend(large).event_id))
    worker.start()
    small = [client.recommender.Recommend(recommend_request()).event_id for _ in range(5)]
    worker.join()
    assert len(small) == 5 and len(finished) == 1
    assert running.engine.log.reader.counts()["decisions"] == 6
