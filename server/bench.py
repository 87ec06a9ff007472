"""Serving benchmark: Recommend and Feedback against the gRPC ceiling of the same server, same run.

Run with ``python -m server.bench`` (``make bench``). The parent process starts a real recbandit
server (:func:`server.app.start`) on 127.0.0.1, port 0, with a fresh data directory; one client
process, started with ``multiprocessing`` *spawn*, drives it with a ``grpc.aio`` client so that the
client's CPU is not the server's GIL. Both share the machine's cores, which is why the ceiling is
measured here and not taken from a table.

Operations, each at every ``--concurrency`` (concurrent in-flight calls on one channel):

``Health/Check`` (the ceiling)
    The standard ``grpc.health.v1.Health/Check`` the server registers: a trivial unary RPC
    answered in Python by the same ``grpc.aio`` server and event loop as the recbandit services.
``Recommend``
    20 candidates (category, brand, price), 10 user features, 5 context features,
    ``num_results=1``; requests vary over seeded users, contexts and candidate sets.
``Recommend over TLS with a token``
    the same Recommend requests at the same concurrency, measured right after plaintext Recommend,
    from a second client process to a second server in the parent that serves TLS (a throwaway
    self-signed RSA 2048 certificate made with ``openssl``) and checks a storefront bearer token on
    every call. Its throughput is reported as a ratio to plaintext Recommend's, not the ceiling's.
``Recommend with metrics on``
    the same Recommend requests, from a third client process to a third server that serves
    ``--metrics-port`` (Prometheus counters and histograms on every call, the engine reporting
    commits and learning) and is scraped once a second meanwhile. Its windows and plaintext
    Recommend's alternate (:data:`AB_ROUNDS` each, added up into one row each), so that the
    machine's drift falls on both; reported as a ratio to plaintext Recommend's throughput: the
    cost of metrics.
``Feedback``
    reward 1.0, label ``click``, one call per event created by Recommend, so every reward is new
    and committed durably before the reply. The events of the Recommend rows are used first, then
    untimed Recommend calls create more (for at most ``max(10 s, 3 × --seconds)``); a row that
    runs out of events ends early and says so.

Each measurement is a warm-up followed by a fixed duration; latency is ``time.perf_counter()``
around each awaited call, throughput is calls over the wall time of the measured window. Before
each measurement the engine finishes learning what earlier Feedback made final, so the rows do
not pay for each other's work.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import math
import multiprocessing
import os
import platform
import random
import secrets
import socket
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.app import RunningServer, start
from server.auth import auth_metadata
from server.logs import configure as configure_logs
from server.servicers import RecommenderServicer
from server.settings import Settings

HOST = "127.0.0.1"
HEALTH, RECOMMEND, FEEDBACK, CREATE_EVENTS = "Health/Check", "Recommend", "Feedback", "create events"
RECOMMEND_TLS = "Recommend over TLS with a token"
RECOMMEND_METRICS = "Recommend with metrics on"
BASELINES = {RECOMMEND: HEALTH, FEEDBACK: HEALTH, RECOMMEND_TLS: RECOMMEND, RECOMMEND_METRICS: RECOMMEND}
"""The row each operation's throughput is divided by in the report, at the same concurrency."""

NUM_ITEMS = 500
NUM_USERS = 2000
NUM_CANDIDATES = 20
REQUEST_POOL = 4096
CATEGORIES = tuple(f"cat-{i}" for i in range(24))
BRANDS = tuple(f"brand-{i}" for i in range(60))

TARGET_CONCURRENCY = 16
RECOMMEND_MIN_RATIO = 0.60
RECOMMEND_MAX_P99_MS = 5.0
FEEDBACK_MIN_RATE = 3000.0
JOB_TIMEOUT_SLACK = 120.0
AB_ROUNDS = 2
"""Recommend with and without metrics are measured in turn, this many windows each."""
MIN_EVENT_SECONDS = 10.0
LEARN_TIMEOUT = 60.0

FeatureDict = Mapping[str, str | float | bool]


# -- what is measured and reported -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Job:
    """One request to the client process: measure ``operation``, or create ``count`` events."""

    operation: str
    concurrency: int
    seconds: float = 0.0
    warmup: float = 0.0
    count: int = 0


@dataclass(frozen=True, slots=True)
class Target:
    """Where the client process calls: a port on :data:`HOST`, and any ``other_ports`` in turn, over
    ``channels`` connections to each; for TLS, the server's certificate and a token."""

    port: int
    root_certificates: bytes | None = None
    token: str = ""
    other_ports: tuple[int, ...] = ()
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Result:
    """One measured row: how many calls completed in how long, and their latency percentiles."""

    operation: str
    concurrency: int
    calls: int
    elapsed: float
    p50_ms: float
    p99_ms: float
    ran_out_of_events: bool = False
    all_calls: int = 0  # warm-up and measured calls, over which the CPU below was spent
    client_cpu_seconds: float = 0.0  # the client process's CPU over the warm-up and the window
    server_cpu_seconds: float = 0.0  # the server process's CPU (every thread) over the same calls
    wall_seconds: float = 0.0  # the wall time over which both CPU figures were counted

    @property
    def client_cpu_us(self) -> float:
        """The client process's CPU microseconds per call."""
        return self.client_cpu_seconds / self.all_calls * 1e6 if self.all_calls else math.nan

    @property
    def server_cpu_us(self) -> float:
        """The server process's CPU microseconds per call: gRPC, recbandit, the log writer, learning."""
        return self.server_cpu_seconds / self.all_calls * 1e6 if self.all_calls else math.nan

    @property
    def cores_busy(self) -> float:
        """Client and server CPU together per second of wall time: how much of the machine was used."""
        return (self.client_cpu_seconds + self.server_cpu_seconds) / self.wall_seconds if self.wall_seconds else math.nan

    @property
    def rate(self) -> float:
        """Completed calls per second of the measured window."""
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0–100) of already sorted values; NaN when there are none."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(job: Job, latencies: list[float], elapsed: float, ran_out: bool,
              all_calls: int = 0, cpu_seconds: float = 0.0) -> Result:
    """Turn a measured window's per-call latencies (seconds) into a :class:`Result`."""
    latencies.sort()
    return Result(
        operation=job.operation,
        concurrency=job.concurrency,
        calls=len(latencies),
        elapsed=elapsed,
        p50_ms=percentile(latencies, 50) * 1e3,
        p99_ms=percentile(latencies, 99) * 1e3,
        ran_out_of_events=ran_out,
        all_calls=all_calls,
        client_cpu_seconds=cpu_seconds,
    )


# -- seeded storefront traffic (built in the client process, before any timing) ---------------------


def set_features(target: Message, field: str, values: FeatureDict) -> None:
    """Fill the proto map ``target.<field>`` (or a candidate's ``features``) from plain values."""
    features = getattr(target, field)
    for name, value in values.items():
        if isinstance(value, bool):
            features[name].bool_value = value
        elif isinstance(value, float):
            features[name].number_value = value
        else:
            features[name].string_value = value


def make_item(rng: random.Random) -> dict[str, str | float]:
    """Three catalog-like features of one item."""
    return {
        "category": rng.choice(CATEGORIES),
        "brand": rng.choice(BRANDS),
        "price": round(rng.lognormvariate(3.0, 0.8), 2),
    }


def make_user(rng: random.Random) -> dict[str, str | float | bool]:
    """Ten features that stay the same for one user across requests."""
    return {
        "segment": rng.choice(("new", "casual", "regular", "vip")),
        "country": rng.choice(("de", "fr", "it", "es", "nl", "pl", "se")),
        "language": rng.choice(("de", "fr", "it", "es", "en")),
        "age_band": rng.choice(("18-24", "25-34", "35-44", "45-54", "55+")),
        "gender": rng.choice(("f", "m", "x", "unknown")),
        "loyalty_tier": rng.choice(("none", "silver", "gold", "platinum")),
        "favourite_category": rng.choice(CATEGORIES),
        "visits_30d": float(rng.randint(0, 40)),
        "basket_value": round(rng.uniform(0.0, 300.0), 2),
        "is_member": rng.random() < 0.4,
    }


def make_context(rng: random.Random) -> dict[str, str]:
    """Five request-context features (``hour`` and ``weekday`` are added by the server)."""
    return {
        "channel": rng.choice(("web", "app", "email")),
        "surface": rng.choice(("home", "pdp", "cart", "search")),
        "device": rng.choice(("mobile", "desktop", "tablet")),
        "locale": rng.choice(("de_DE", "fr_FR", "it_IT", "en_GB")),
        "page_type": rng.choice(("landing", "category", "product", "checkout", "account")),
    }


def make_recommend_requests(seed: int, count: int = REQUEST_POOL) -> list[pb.RecommendRequest]:
    """``count`` varied Recommend requests from a seeded catalog and user base."""
    rng = random.Random(seed)
    items = [(f"sku-{i:05d}", make_item(rng)) for i in range(NUM_ITEMS)]
    users = [(f"user-{i:05d}", make_user(rng)) for i in range(NUM_USERS)]
    requests = []
    for _ in range(count):
        request = make_visit(rng, users)
        for item_id, features in rng.sample(items, NUM_CANDIDATES):
            set_features(request.candidates.add(item_id=item_id), "features", features)
        requests.append(request)
    return requests


def make_visit(rng: random.Random, users: Sequence[tuple[str, FeatureDict]]) -> pb.RecommendRequest:
    """A Recommend request, without candidates, of one of ``users`` in a random context."""
    user_id, user_features = rng.choice(users)
    request = pb.RecommendRequest(user_id=user_id, num_results=1)
    set_features(request, "user_features", user_features)
    set_features(request, "context", make_context(rng))
    return request


# -- the client process ------------------------------------------------------------------------------


class BenchClient:
    """Runs :class:`Job` s over one ``grpc.aio`` channel and keeps the events Recommend created."""

    def __init__(self, channel: grpc.aio.Channel, seed: int, token: str = "") -> None:
        recommender = pb_grpc.RecommenderStub(channel)
        self._metadata = auth_metadata(token) if token else None
        self._recommend = recommender.Recommend
        self._feedback = recommender.Feedback
        self._check = health_pb2_grpc.HealthStub(channel).Check
        self._health_request = health_pb2.HealthCheckRequest(service="")
        self._requests = self.make_requests(seed)
        self._next_request = 0
        self._events: deque[str] = deque()

    def make_requests(self, seed: int) -> list[pb.RecommendRequest]:
        """The Recommend requests this client cycles through (a subclass may send others)."""
        return make_recommend_requests(seed)

    async def call(self, operation: str) -> bool:
        """Make one call of ``operation``; False when Feedback has no unrewarded event left."""
        if operation == HEALTH:
            await self._check(self._health_request, metadata=self._metadata)
        elif operation == FEEDBACK:
            if not self._events:
                return False
            event_id = self._events.popleft()
            await self._feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label="click"),
                                 metadata=self._metadata)
        else:
            request = self._requests[self._next_request % len(self._requests)]
            self._next_request += 1
            self._events.append((await self._recommend(request, metadata=self._metadata)).event_id)
        return True

    async def _worker(self, operation: str, deadline: float, latencies: list[float]) -> bool:
        """Call back to back until ``deadline``; return True if it stopped for lack of events."""
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            if not await self.call(operation):
                return True
            latencies.append(time.perf_counter() - began)
        return False

    async def window(self, operation: str, concurrency: int, seconds: float) -> tuple[list[float], float, bool]:
        """Run ``concurrency`` workers for ``seconds``: latencies, wall time, whether events ran out."""
        latencies: list[float] = []
        began = time.perf_counter()
        deadline = began + seconds
        stopped = await asyncio.gather(*(self._worker(operation, deadline, latencies) for _ in range(concurrency)))
        return latencies, time.perf_counter() - began, any(stopped)

    async def create_events(self, count: int, concurrency: int, seconds: float) -> None:
        """Call Recommend (untimed) until ``count`` unrewarded events wait, for at most ``seconds``."""
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while len(self._events) < count and time.perf_counter() < deadline:
                await self.call(RECOMMEND)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def run(self, job: Job) -> Result | int:
        """Warm up and measure ``job``; for ``create events``, return how many events wait."""
        if job.operation == CREATE_EVENTS:
            await self.create_events(job.count, job.concurrency, job.seconds)
            return len(self._events)
        cpu_began = time.process_time()
        warmup_calls = 0
        if job.warmup > 0:
            warmup_calls = len((await self.window(job.operation, job.concurrency, job.warmup))[0])
        latencies, elapsed, ran_out = await self.window(job.operation, job.concurrency, job.seconds)
        cpu = time.process_time() - cpu_began
        return summarise(job, latencies, elapsed, ran_out, warmup_calls + len(latencies), cpu)


def open_channel(target: Target) -> grpc.aio.Channel | RoundRobinChannel:
    """One channel to ``target``'s port; with several ports or channels, a :class:`RoundRobinChannel`
    over a connection of its own to each (so that serving processes sharing a port get calls too)."""
    if target.channels == 1 and not target.other_ports:
        return _channel(target, target.port)
    own_connection = [("grpc.use_local_subchannel_pool", 1)]  # channels to one address share none
    ports = (target.port, *target.other_ports)
    return RoundRobinChannel([_channel(target, port, own_connection)
                              for _ in range(target.channels) for port in ports])


def _channel(target: Target, port: int, options: list[tuple[str, int]] | None = None) -> grpc.aio.Channel:
    address = f"{HOST}:{port}"
    if target.root_certificates is None:
        return grpc.aio.insecure_channel(address, options)
    credentials = grpc.ssl_channel_credentials(root_certificates=target.root_certificates)
    return grpc.aio.secure_channel(address, credentials, options)


class RoundRobinChannel:
    """Several channels as one for the generated stubs: each call goes to the next channel in turn."""

    def __init__(self, channels: Sequence[grpc.aio.Channel]) -> None:
        self.channels = list(channels)

    def _in_turn(self, kind: str, method: str, *args: object, **kwargs: object) -> Callable[..., object]:
        calls = itertools.cycle([getattr(channel, kind)(method, *args, **kwargs) for channel in self.channels])
        return lambda *call_args, **call_kwargs: next(calls)(*call_args, **call_kwargs)

    unary_unary = functools.partialmethod(_in_turn, "unary_unary")
    unary_stream = functools.partialmethod(_in_turn, "unary_stream")
    stream_unary = functools.partialmethod(_in_turn, "stream_unary")
    stream_stream = functools.partialmethod(_in_turn, "stream_stream")

    async def channel_ready(self) -> None:
        await asyncio.gather(*(channel.channel_ready() for channel in self.channels))

    async def __aenter__(self) -> RoundRobinChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))


async def serve_jobs(conn: Connection, target: Target, seed: int, client_class: type[BenchClient]) -> None:
    """Answer each :class:`Job` received on ``conn`` until ``None``; report failures as text."""
    loop = asyncio.get_running_loop()
    async with open_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        client = client_class(channel, seed, target.token)
        conn.send("ready")
        while (job := await loop.run_in_executor(None, conn.recv)) is not None:
            try:
                conn.send(await client.run(job))
            except Exception:
                conn.send(f"{job.operation} at concurrency {job.concurrency} failed:\n{traceback.format_exc()}")


def client_main(conn: Connection, target: Target, seed: int, client_class: type[BenchClient]) -> None:
    """Entry point of the spawned client process."""
    try:
        asyncio.run(serve_jobs(conn, target, seed, client_class))
    finally:
        conn.close()


# -- the parent: server, orchestration, report --------------------------------------------------------


class ClientProcess:
    """The spawned client process, running a ``client_class`` (importable by name), and the pipe that
    carries its jobs and results."""

    def __init__(self, target: Target, seed: int, client_class: type[BenchClient] = BenchClient) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=client_main, args=(child_conn, target, seed, client_class),
                                        name="bench-client")
        self._process.daemon = True
        self._process.start()
        child_conn.close()
        self._receive(timeout=60.0)

    def _receive(self, timeout: float) -> object:
        """The client's next answer; its error text is raised here as :class:`RuntimeError`."""
        if not self._conn.poll(timeout):
            raise TimeoutError(f"the client process did not answer within {timeout:.0f}s")
        answer = self._conn.recv()
        if isinstance(answer, str) and answer != "ready":
            raise RuntimeError(answer)
        return answer

    def ask(self, job: Job) -> object:
        """Send ``job`` and wait (bounded) for its answer."""
        self._conn.send(job)
        return self._receive(timeout=job.warmup + job.seconds + JOB_TIMEOUT_SLACK)

    def close(self) -> None:
        """Tell the client to finish, then wait for it (terminate it only if it hangs)."""
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._conn.close()


def measure(running: RunningServer, client: ClientProcess, job: Job) -> Result:
    """Let the engine finish learning, then run ``job`` in the client and print a progress line.

    The server's CPU is this process's (the server runs in it; the parent only waits meanwhile),
    counted until the engine has learned what the row's calls made final, so a Feedback row pays
    for its learning.
    """
    running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)
    cpu_began, wall_began = time.process_time(), time.perf_counter()
    result = client.ask(job)
    assert isinstance(result, Result)
    running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)
    result = replace(result, server_cpu_seconds=time.process_time() - cpu_began,
                     wall_seconds=time.perf_counter() - wall_began)
    print(
        f"  {result.operation:<13} c={result.concurrency:<3} {result.rate:9,.0f} calls/s"
        f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms"
        f"  CPU/call server {result.server_cpu_us:5,.0f} µs, client {result.client_cpu_us:5,.0f} µs",
        flush=True,
    )
    return result


class InProcessContext:
    """The little of a call's context the servicers read, for calls made in this process: no deadline, never
    cancelled, and an abort that raises."""

    def time_remaining(self) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: object = ()) -> None:
        raise RuntimeError(f"{code.name}: {details}")


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """The servicer's own work for ``calls`` calls, without gRPC: throughput and CPU per call."""

    operation: str
    calls: int
    elapsed: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / self.calls * 1e6 if self.calls else math.nan


async def _handler_window(call: Callable[[Message], Awaitable[object]], requests: Iterator[Message],
                          concurrency: int, seconds: float) -> int:
    """Await ``call`` on successive ``requests`` from ``concurrency`` tasks for ``seconds``; the count."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline and (request := next(requests, None)) is not None:
            await call(request)
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def measure_handlers(running: RunningServer, seed: int, seconds: float) -> list[HandlerResult]:
    """Recommend and Feedback through the servicers alone, in this process, with no gRPC.

    The same requests as the client's go to a :class:`RecommenderServicer` on a private event
    loop at concurrency 16: conversion, validation, the decision or reward, its durable commit
    (the log writer's thread) and, for Feedback, the learning it makes final (the learner's
    thread), all inside the measured time. Feedback rewards the events this Recommend phase made,
    so it may end before ``seconds``; its rate is over the time it took. Against the gRPC rows
    this splits a call's server CPU, approximately (the load differs), into recbandit's work and
    the transport's.
    """
    servicer = RecommenderServicer(running.engine)
    context = InProcessContext()
    event_ids: list[str] = []

    async def recommend(request: Message) -> None:
        event_ids.append((await servicer.Recommend(request, context)).event_id)  # type: ignore[arg-type]

    async def feedback(request: Message) -> None:
        await servicer.Feedback(request, context)  # type: ignore[arg-type]

    def run(operation: str, call: Callable[[Message], Awaitable[object]], requests: Iterator[Message]) -> HandlerResult:
        running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)
        cpu_began, wall_began = time.process_time(), time.perf_counter()
        calls = asyncio.run(_handler_window(call, requests, TARGET_CONCURRENCY, seconds))
        running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)
        elapsed = time.perf_counter() - wall_began
        result = HandlerResult(operation, calls, elapsed, time.process_time() - cpu_began)
        print(f"  {operation:<13} c={TARGET_CONCURRENCY:<3} {result.rate:9,.0f} calls/s  "
              f"CPU/call {result.cpu_us:5,.0f} µs (servicer alone, no gRPC: {calls:,} calls in {elapsed:.1f} s)",
              flush=True)
        return result

    requests = make_recommend_requests(seed)
    rewards = (pb.FeedbackRequest(event_id=event_id, reward=1.0, label="click") for event_id in event_ids)
    return [
        run(RECOMMEND, recommend, itertools.cycle(requests)),
        run(FEEDBACK, feedback, rewards),
    ]


def run_benchmark(running: RunningServer, tls: RunningServer, tls_target: Target, metered: RunningServer,
                  args: argparse.Namespace) -> list[Result]:
    """Ceiling, Recommend, Recommend over TLS and with metrics at each concurrency, then Feedback
    over Recommend's events."""
    with (closing(ClientProcess(Target(running.port), args.seed)) as client,
          closing(ClientProcess(tls_target, args.seed)) as tls_client,
          closing(ClientProcess(Target(metered.port), args.seed)) as metered_client):
        results: list[Result] = []
        for concurrency in args.concurrency:
            results.append(measure(running, client, Job(HEALTH, concurrency, args.seconds, args.warmup)))
            plain, metered_rows = [], []
            for _ in range(AB_ROUNDS):  # A/B/A/B: the machine's drift falls on both alike
                plain.append(measure(running, client, Job(RECOMMEND, concurrency, args.seconds, args.warmup)))
                with scraping(metered):
                    job = Job(RECOMMEND_METRICS, concurrency, args.seconds, args.warmup)
                    metered_rows.append(measure(metered, metered_client, job))
            results += [combined(plain), combined(metered_rows)]
            results.append(measure(tls, tls_client, Job(RECOMMEND_TLS, concurrency, args.seconds, args.warmup)))
        ceilings = {r.concurrency: r.rate for r in results if r.operation == HEALTH}
        for concurrency in args.concurrency:
            results.append(measure_feedback(running, client, concurrency, args, ceilings[concurrency]))
        return results


def measure_feedback(running: RunningServer, client: ClientProcess, concurrency: int, args: argparse.Namespace,
                     ceiling_rate: float) -> Result:
    """Feedback at ``concurrency`` over the client's events, after untimed Recommends have made enough
    for a window at the ceiling's rate."""
    needed = math.ceil(ceiling_rate * (args.seconds + args.warmup) * 1.25)
    budget = max(MIN_EVENT_SECONDS, 3 * args.seconds)
    client.ask(Job(CREATE_EVENTS, max(concurrency, TARGET_CONCURRENCY), seconds=budget, count=needed))
    return measure(running, client, Job(FEEDBACK, concurrency, args.seconds, args.warmup))


def combined(windows: Sequence[Result]) -> Result:
    """Windows of one operation as one row: calls, time and CPU added up; p50 the calls-weighted
    mean of the windows' p50s, p99 the largest of their p99s."""
    calls = sum(w.calls for w in windows)
    return replace(
        windows[0],
        calls=calls,
        elapsed=sum(w.elapsed for w in windows),
        p50_ms=sum(w.p50_ms * w.calls for w in windows) / calls if calls else math.nan,
        p99_ms=max(w.p99_ms for w in windows),
        ran_out_of_events=any(w.ran_out_of_events for w in windows),
        all_calls=sum(w.all_calls for w in windows),
        client_cpu_seconds=sum(w.client_cpu_seconds for w in windows),
        server_cpu_seconds=sum(w.server_cpu_seconds for w in windows),
        wall_seconds=sum(w.wall_seconds for w in windows),
    )


def throughput_ratio(result: Result, results: Sequence[Result]) -> float | None:
    """``result``'s throughput over its :data:`BASELINES` row's at the same concurrency; None without one."""
    baseline = BASELINES.get(result.operation, result.operation)
    rates = [r.rate for r in results if r.operation == baseline and r.concurrency == result.concurrency]
    return result.rate / rates[0] if rates and rates[0] else None


def format_table(results: Sequence[Result]) -> str:
    """The Markdown table of every row, with throughput relative to its baseline's (mostly the ceiling)."""
    lines = [
        "| operation | concurrency | calls | calls/s | p50 ms | p99 ms | throughput / baseline"
        " | server CPU µs/call | client CPU µs/call | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {HEALTH: 0, RECOMMEND: 1, RECOMMEND_TLS: 2, RECOMMEND_METRICS: 3, FEEDBACK: 4}
    for r in sorted(results, key=lambda r: (order[r.operation], r.concurrency)):
        name = f"{r.operation} (ceiling)" if r.operation == HEALTH else r.operation
        ratio = throughput_ratio(r, results)
        note = " (ran out of events)" if r.ran_out_of_events else ""
        cells = (name + note, str(r.concurrency), f"{r.calls:,}", f"{r.rate:,.0f}")
        cpu = (f"{r.server_cpu_us:,.0f}", f"{r.client_cpu_us:,.0f}", f"{r.cores_busy:.2f}")
        latency_and_ratio = (f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", "n/a" if ratio is None else f"{ratio:.2f}")
        lines.append("| " + " | ".join((*cells, *latency_and_ratio, *cpu)) + " |")
    lines += ["", "Baseline: the ceiling at the same concurrency" + (
        f"; for {RECOMMEND_TLS} and {RECOMMEND_METRICS}, plaintext {RECOMMEND}."
        if any(r.operation in (RECOMMEND_TLS, RECOMMEND_METRICS) for r in results) else ".")]
    return "\n".join(lines)


def ratio_bound(ceiling: Result, recommend: Result, cores: int) -> float:
    """The most Recommend's throughput can be of the ceiling's at their measured CPU per call.

    With every core busy, Recommend does at most ``cores / (client + server CPU per call)`` calls
    a second; the ceiling did ``cores_busy / (its CPU per call)``. The ratio of the two bounds
    Recommend / ceiling whatever the number of server processes, unless CPU per call changes.
    """
    recommend_max = cores / (recommend.client_cpu_us + recommend.server_cpu_us)
    ceiling_rate = ceiling.cores_busy / (ceiling.client_cpu_us + ceiling.server_cpu_us)
    return recommend_max / ceiling_rate


def format_breakdown(results: Sequence[Result], handlers: Sequence[HandlerResult]) -> str:
    """Where one call's CPU goes at concurrency 16: client, the servicer alone, and the rest.

    The rest of the server's CPU is gRPC's per-call work, the event loop's switches and the log
    writer's hand-offs; for Health/Check, whose servicer is gRPC's own, all of it is the transport.
    """
    row = {(r.operation, r.concurrency): r for r in results}
    alone = {h.operation: h for h in handlers}
    lines = [
        f"CPU per call at concurrency {TARGET_CONCURRENCY}, µs:",
        "",
        "| operation | client | server | ≈ the servicer alone | ≈ the rest (gRPC, loop, hand-offs)"
        " | servicer alone, calls/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for operation in (HEALTH, RECOMMEND, FEEDBACK):
        r = row.get((operation, TARGET_CONCURRENCY))
        if r is None:
            continue
        servicer = alone.get(operation)
        own = servicer.cpu_us if servicer else 0.0
        cells = (operation, f"{r.client_cpu_us:,.0f}", f"{r.server_cpu_us:,.0f}",
                 f"{own:,.0f}" if servicer else "—", f"{r.server_cpu_us - own:,.0f}",
                 f"{servicer.rate:,.0f}" if servicer else "—")
        lines.append("| " + " | ".join(cells) + " |")
    health, recommend = row.get((HEALTH, TARGET_CONCURRENCY)), row.get((RECOMMEND, TARGET_CONCURRENCY))
    if health and recommend:
        cores = len(os.sched_getaffinity(0))
        bound = ratio_bound(health, recommend, cores)
        lines += ["", f"With all {cores} cores busy at this CPU per call, Recommend could reach at most {bound:.2f} of "
                      f"the ceiling, however many server processes shared them (the ceiling used "
                      f"{health.cores_busy:.2f} cores)."]
    return "\n".join(lines)


def target_checks(results: Sequence[Result]) -> list[tuple[str, str, bool | None]]:
    """Each target at concurrency 16: its wording, the measured value, and whether it is met."""
    row = {(r.operation, r.concurrency): r for r in results}
    ceiling = row.get((HEALTH, TARGET_CONCURRENCY))
    recommend = row.get((RECOMMEND, TARGET_CONCURRENCY))
    feedback = row.get((FEEDBACK, TARGET_CONCURRENCY))
    checks: list[tuple[str, str, bool | None]] = []
    if recommend and ceiling:
        ratio = recommend.rate / ceiling.rate
        checks.append((f"Recommend throughput >= {RECOMMEND_MIN_RATIO:.0%} of the ceiling", f"{ratio:.0%}",
                       ratio >= RECOMMEND_MIN_RATIO))
        checks.append((f"Recommend p99 <= {RECOMMEND_MAX_P99_MS:g} ms", f"{recommend.p99_ms:.2f} ms",
                       recommend.p99_ms <= RECOMMEND_MAX_P99_MS))
    else:
        checks.append(("Recommend targets", "not measured", None))
    if feedback:
        checks.append((f"Feedback >= {FEEDBACK_MIN_RATE:,.0f} calls/s", f"{feedback.rate:,.0f} calls/s",
                       feedback.rate >= FEEDBACK_MIN_RATE))
    else:
        checks.append(("Feedback target", "not measured", None))
    return checks


def format_targets(results: Sequence[Result]) -> str:
    """The targets (all at concurrency 16) as a Markdown list with MET / MISSED."""
    lines = [f"Targets at concurrency {TARGET_CONCURRENCY}:"]
    for wording, measured, met in target_checks(results):
        verdict = "n/a (run with --concurrency including 16)" if met is None else ("MET" if met else "MISSED")
        lines.append(f"- {wording}: {measured} — {verdict}")
    return "\n".join(lines)


def parse_concurrency(text: str) -> list[int]:
    """``"1,16"`` → ``[1, 16]``; every level between 1 and 256."""
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(not 1 <= c <= 256 for c in levels):
        raise argparse.ArgumentTypeError("give comma-separated levels between 1 and 256, e.g. 1,16")
    return list(dict.fromkeys(levels))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command-line flags: ``--seconds``, ``--warmup``, ``--concurrency``, ``--seed``."""
    parser = argparse.ArgumentParser(prog="python -m server.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per row (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each row (default 1)")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 16], help="levels (default 1,16)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated traffic (default 7)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds must be within (0, 600] and --warmup within [0, 60]")
    return args


@contextmanager
def serving(settings: Settings) -> Iterator[RunningServer]:
    """A server started on ``settings``, stopped on leaving the block."""
    running = start(settings)
    try:
        yield running
    finally:
        running.stop(grace=1.0)


@contextmanager
def scraping(running: RunningServer, interval: float = 1.0) -> Iterator[None]:
    """Scrape ``running``'s /metrics every ``interval`` seconds while the block runs, as Prometheus would."""
    host, port = running.metrics_endpoint.server_address[:2]
    done = threading.Event()

    def scrape() -> None:
        while not done.wait(interval):
            urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read()

    thread = threading.Thread(target=scrape, name="bench-scrape", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def free_port() -> int:
    """A port on :data:`HOST` that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def tls_settings_and_token(folder: Path) -> tuple[Settings, str]:
    """Settings for a server that serves TLS with a throwaway self-signed certificate for :data:`HOST`
    and takes one storefront token, all made in ``folder``; and the token."""
    folder.mkdir()
    cert, key, tokens = folder / "cert.pem", folder / "key.pem", folder / "tokens"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    token = secrets.token_urlsafe(24)
    tokens.write_text(f"storefront {token}\n")
    tokens.chmod(0o600)
    settings = Settings(port=0, host=HOST, data_dir=str(folder / "data"), tls_cert=str(cert), tls_key=str(key),
                        auth_tokens=str(tokens))
    return settings, token


def main(argv: Sequence[str] | None = None) -> None:
    """Start a plaintext and a TLS server on temporary data directories, benchmark them, print the report."""
    args = parse_args(argv)
    began = time.perf_counter()
    print(f"recbandit bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"{args.warmup:g} s warm-up + {args.seconds:g} s per row", flush=True)
    with tempfile.TemporaryDirectory(prefix="recbandit-bench-") as workdir, \
            open(Path(workdir) / "server.log", "w") as server_log:
        configure_logs("INFO", "text", access_log=True, stream=server_log)  # as `recbandit serve` logs
        tls_settings, token = tls_settings_and_token(Path(workdir) / "tls")
        metered_settings = Settings(port=0, host=HOST, data_dir=str(Path(workdir) / "metered"),
                                    metrics_port=free_port())
        with (serving(Settings(port=0, host=HOST, data_dir=str(Path(workdir) / "data"))) as running,
              serving(tls_settings) as tls, serving(metered_settings) as metered):
            tls_target = Target(tls.port, Path(tls_settings.tls_cert).read_bytes(), token)
            results = run_benchmark(running, tls, tls_target, metered, args)
            try:
                handlers = measure_handlers(running, args.seed, args.seconds)
            except Exception:  # the gRPC rows are measured: report them anyway
                print(f"the servicers-alone phase failed:\n{traceback.format_exc()}", flush=True)
                handlers = []
    print()
    print(format_table(results))
    print()
    print(format_breakdown(results, handlers))
    print()
    print(format_targets(results))
    print(f"\nServer: grpc.aio on one event loop thread, access lines on (text, to a file), "
          f"data dir on {tempfile.gettempdir()}; "
          f"client: grpc.aio in a spawned process. Total {time.perf_counter() - began:.1f} s.")


if __name__ == "__main__":
    main()
