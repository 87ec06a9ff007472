"""Scale-out benchmark: Recommend beyond one process, Feedback on PostgreSQL, and how stale replicas' models are.

Run with ``python -m server.bench_scale`` (``make bench`` runs it after the log benchmark). It
uses :mod:`server.bench`'s client: a process started with ``multiprocessing`` *spawn* that drives
the servers with ``grpc.aio``, here over :data:`CHANNELS` connections taken in turn (so that the
kernel spreads them over the serving processes that share a port). The servers are real
``recbandit`` processes on 127.0.0.1, each with a fresh data directory; every PostgreSQL store is a
schema of its own in ``--postgres``, dropped at the end. Setups, one after the other:

1. ``recbandit serve --store URL`` (one process, role all) on PostgreSQL: ``Health/Check``, the
   no-op ceiling every throughput is divided by, then Recommend.
2. ``recbandit serve --processes 2`` on SQLite (two serving processes on one port, SO_REUSEPORT,
   and a learner): ``Health/Check``, then Recommend.
3. Two replicas (``serve --role serve --store URL``, a port each; the client alternates) and a
   learner (``recbandit learn``) on PostgreSQL: Recommend; then the model's staleness: ``--rewards``
   rewards, one every :data:`REWARD_SPACING` s with nothing else running, each on a decision made
   on the other replica. A reward's staleness is the time from its Feedback's reply to the moment
   the last replica's Admin/GetModelInfo (polled every :data:`POLL_INTERVAL` s) shows an
   ``examples_learned`` that includes it. With ``num_results=1``, ``earliest`` aggregation and a
   reward window longer than the run, each reward makes exactly one outcome, the learner joins
   every reward waiting in one pass and learns outcomes in order, so the k-th reward is learned
   when ``examples_learned`` has risen by k (checked: it rises by exactly ``--rewards``).
4. Feedback through the servicer alone (:class:`server.servicers.RecommenderServicer` in this
   process, no gRPC) on one engine on PostgreSQL, over events its Recommend made untimed first:
   every reward committed durably before its reply; CPU counted until the engine learned them.

Every Recommend and Health/Check row runs at concurrency 16 (a warm-up, then ``--seconds``), with
:mod:`server.bench`'s requests. Server CPU is utime + stime from ``/proc`` of every server process
and its children (supervisor, serving processes, learner) over the warm-up and the window, per
call; PostgreSQL's is that of the backends whose ``application_name`` is the schema's (the
database's shared background processes are not counted). Both share the machine's cores with the
client, so each row also gives the bound: the calls a second all cores allow at its CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import psycopg

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.app import RunningServer
from server.bench import (FEEDBACK, HEALTH, HOST, LEARN_TIMEOUT, MIN_EVENT_SECONDS, RECOMMEND, TARGET_CONCURRENCY,
                          ClientProcess, InProcessContext, Job, Result, Target, make_recommend_requests, percentile,
                          serving, summarise)
from server.logs import configure as configure_logs
from server.processes import SNAPSHOT_INTERVAL
from server.servicers import RecommenderServicer
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
CHANNELS = 8
REWARD_WINDOW = "10m"
PROCESSES_MIN_RATIO = 0.55
FEEDBACK_MIN_RATE = 2000.0
STALENESS_MAX_P99 = 2.0
REWARD_SPACING = 0.3
POLL_INTERVAL = 0.02
STALENESS_TIMEOUT = 15.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0))
ONE, PROCESSES, REPLICAS, ALONE = ("1 process, PostgreSQL", "--processes 2, SQLite",
                                   "2 replicas + learner, PostgreSQL", "servicer alone, PostgreSQL")


# -- CPU of processes, from /proc ----------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from its third field on (state, ppid, …); None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(roots: Sequence[int]) -> list[int]:
    """``roots`` and every process descending from them."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], list(roots)
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += parents.get(pid, [])
    return tree


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """utime + stime of each process still there."""
    found = {}
    for pid in pids:
        if (fields := _stat(pid)) is not None:
            found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return found


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


class PostgresBackends:
    """The CPU of the PostgreSQL backends whose ``application_name`` is ``name`` (the database is on this machine)."""

    def __init__(self, admin: psycopg.Connection, name: str) -> None:
        self.admin, self.name = admin, name

    def cpu(self) -> dict[int, float]:
        pids = [pid for (pid,) in self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.name,))]
        return cpu_seconds(pids)


@contextmanager
def postgres_store(dsn: str, tag: str) -> Iterator[tuple[str, PostgresBackends]]:
    """A new schema of ``dsn``: the store URL that uses it (and names its connections after it), and the
    CPU of those connections; afterwards any still open are ended and the schema is dropped."""
    name = f"recbandit_bench_scale_{os.getpid()}_{tag}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {name}")
        try:
            yield f"{dsn}?options=-csearch_path%3D{name}&application_name={name}", PostgresBackends(admin, name)
        finally:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
            admin.execute(f"DROP SCHEMA {name} CASCADE")


# -- server processes ----------------------------------------------------------------------------------


class Servers:
    """The ``recbandit`` processes of one setup, their logs in ``workdir``; all stopped by :meth:`close`."""

    def __init__(self, workdir: Path, postgres: PostgresBackends | None = None) -> None:
        self.workdir, self.postgres = workdir, postgres
        workdir.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        """``recbandit ARGS`` with its data directory and log named ``name`` in the work directory."""
        log_file = self.workdir / f"{name}.log"
        with open(log_file, "wb") as sink:
            argv = [sys.executable, "-m", "server.cli", *args, "--data-dir", str(self.workdir / name)]
            process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.processes.append(process)
        return process, log_file

    def wait_for(self, process: subprocess.Popen[bytes], log_file: Path, pattern: str, count: int = 1) -> str:
        """The first of ``count`` lines matching ``pattern`` in the process's log, once there are that many."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            found = re.findall(pattern, log_file.read_text(errors="replace"))
            if len(found) >= count:
                return str(found[0])
            time.sleep(0.05)
        raise RuntimeError(f"{log_file.stem} did not start: {log_file.read_text(errors='replace')[-2000:]}")

    def serve(self, name: str, *flags: str, processes: int = 1) -> int:
        """Start ``recbandit serve`` and return its port once every serving process listens."""
        process, log_file = self.start(name, "serve", "--host", HOST, "--port", "0", "--reward-window", REWARD_WINDOW,
                                       *flags)
        ready = processes + 1 if processes > 1 else 1  # each serving process's line, then the supervisor's
        return int(self.wait_for(process, log_file, r"listening on [^ ]+:(\d+)", ready))

    def cpu(self) -> dict[int, float]:
        return cpu_seconds(process_tree([p.pid for p in self.processes]))

    def postgres_cpu(self) -> dict[int, float] | None:
        return None if self.postgres is None else self.postgres.cpu()

    def close(self) -> None:
        """SIGTERM each process and wait for it (kill it after :data:`STOP_TIMEOUT`), then end any of
        their children left behind."""
        started = {pid: _start_time(pid) for pid in process_tree([p.pid for p in self.processes])}
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            deadline = time.monotonic() + 10.0
            left = [pid for pid, start in started.items() if start is not None and _start_time(pid) == start]
            for pid in left:
                with suppress(ProcessLookupError):
                    os.kill(pid, sig)
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = [pid for pid in left if _start_time(pid) == started[pid]]


def _start_time(pid: int) -> str | None:
    """When the process started (to tell it from a later one with its pid); None once gone or a zombie."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def labels(pids: Sequence[int]) -> dict[int, str]:
    """What each server process is: ``serve``, ``learn``, or the ``supervisor`` of ``serve --processes``."""
    found = {}
    for pid in pids:
        try:
            words = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        command = words[words.index("server.cli") + 1] if "server.cli" in words[:-1] else "?"
        found[pid] = "supervisor" if "--processes" in words else command
    return found


# -- what is measured ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """A measured row: the client's :class:`server.bench.Result` with every server process's CPU, and
    PostgreSQL's (None on SQLite); ``in_process``: the servicer alone, no client and no gRPC."""

    setup: str
    result: Result
    postgres_cpu_seconds: float | None = None
    in_process: bool = False
    serving_cpu_seconds: tuple[float, ...] = ()  # each serving process's share of the server CPU

    @property
    def postgres_cpu_us(self) -> float:
        calls = self.result.all_calls
        return self.postgres_cpu_seconds / calls * 1e6 if self.postgres_cpu_seconds is not None and calls else math.nan

    @property
    def cpu_us(self) -> float:
        """Client, server and PostgreSQL CPU per call: what one call costs the machine."""
        r = self.result
        return r.client_cpu_us + r.server_cpu_us + (0.0 if self.postgres_cpu_seconds is None else self.postgres_cpu_us)

    @property
    def bound(self) -> float:
        """Calls a second that all the machine's cores allow at :attr:`cpu_us`."""
        return CORES / self.cpu_us * 1e6


def measure(setup: str, servers: Servers, client: ClientProcess, job: Job) -> Row:
    """Run ``job`` in the client; count the CPU of every server process (and PostgreSQL backend) meanwhile."""
    before, postgres_before, began = servers.cpu(), servers.postgres_cpu(), time.perf_counter()
    result = client.ask(job)
    assert isinstance(result, Result)
    after, postgres_after = servers.cpu(), servers.postgres_cpu()
    result = replace(result, server_cpu_seconds=cpu_delta(before, after), wall_seconds=time.perf_counter() - began)
    postgres = None if postgres_before is None else cpu_delta(postgres_before, postgres_after or {})
    names, spent = labels(list(after)), {pid: cpu - before.get(pid, 0.0) for pid, cpu in sorted(after.items())}
    split = ", ".join(f"{names.get(pid, '?')} {cpu:.2f}" for pid, cpu in spent.items())
    print(f"  {job.operation:<13} {setup:<33} {result.rate:7,.0f} calls/s  p50 {result.p50_ms:6.2f} ms  "
          f"p99 {result.p99_ms:6.2f} ms  server CPU s: {split}"
          + ("" if postgres is None else f"; PostgreSQL {postgres:.2f}"), flush=True)
    serving = tuple(cpu for pid, cpu in spent.items() if names.get(pid) == "serve")
    return Row(setup, result, postgres, serving_cpu_seconds=serving)


async def timed_calls(call: Callable[[], Awaitable[bool]], concurrency: int,
                      seconds: float) -> tuple[list[float], float, bool]:
    """``call`` from ``concurrency`` tasks for ``seconds``: latencies, wall time, whether a call said stop."""
    latencies: list[float] = []
    began = time.perf_counter()

    async def worker() -> bool:
        while (start := time.perf_counter()) < began + seconds:
            if not await call():
                return True
            latencies.append(time.perf_counter() - start)
        return False

    stopped = await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began, any(stopped)


def measure_feedback_alone(running: RunningServer, postgres: PostgresBackends, args: argparse.Namespace) -> Row:
    """Feedback through the servicer alone (as :func:`server.bench.measure_handlers`), with latencies,
    over events its Recommend made untimed: enough for twice the target rate, for at most
    ``max(10 s, 3 × --seconds)``. CPU counted until the engine learned the rewards."""
    servicer, context = RecommenderServicer(running.engine), InProcessContext()
    requests, events = make_recommend_requests(args.seed), deque[str]()
    needed = math.ceil(FEEDBACK_MIN_RATE * 2 * (args.seconds + args.warmup))

    async def decide() -> bool:
        request = requests[len(events) % len(requests)]
        events.append((await servicer.Recommend(request, context)).event_id)  # type: ignore[arg-type]
        return len(events) < needed

    async def reward() -> bool:
        if not events:
            return False
        request = pb.FeedbackRequest(event_id=events.popleft(), reward=1.0, label="click")
        await servicer.Feedback(request, context)  # type: ignore[arg-type]
        return True

    asyncio.run(timed_calls(decide, TARGET_CONCURRENCY, max(MIN_EVENT_SECONDS, 3 * args.seconds)))
    running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)
    cpu, postgres_before, began = time.process_time(), postgres.cpu(), time.perf_counter()
    warmup = asyncio.run(timed_calls(reward, TARGET_CONCURRENCY, args.warmup))[0] if args.warmup else []
    latencies, elapsed, ran_out = asyncio.run(timed_calls(reward, TARGET_CONCURRENCY, args.seconds))
    running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)
    job = Job(FEEDBACK, TARGET_CONCURRENCY, args.seconds, args.warmup)
    result = replace(summarise(job, latencies, elapsed, ran_out, len(warmup) + len(latencies)),
                     server_cpu_seconds=time.process_time() - cpu, wall_seconds=time.perf_counter() - began)
    row = Row(ALONE, result, cpu_delta(postgres_before, postgres.cpu()), in_process=True)
    print(f"  {FEEDBACK:<13} {ALONE:<33} {result.rate:7,.0f} calls/s  p50 {result.p50_ms:6.2f} ms  "
          f"p99 {result.p99_ms:6.2f} ms  ({len(events):,} events left)", flush=True)
    return row


@dataclass(frozen=True, slots=True)
class Staleness:
    """Seconds from each reward's acknowledgement until every replica served a model that learned it
    (``inf``: not within :data:`STALENESS_TIMEOUT`), and how far ``examples_learned`` rose on each replica."""

    seconds: tuple[float, ...]
    rose_by: tuple[int, ...]


def measure_staleness(ports: Sequence[int], rewards: int, seed: int) -> Staleness:
    """Reward a decision of one replica on the other, every :data:`REWARD_SPACING` s, while a thread
    notes when each replica's ``examples_learned`` first shows each reward."""
    channels = [grpc.insecure_channel(f"{HOST}:{port}") for port in ports]
    recommenders = [pb_grpc.RecommenderStub(c) for c in channels]
    admins = [pb_grpc.AdminStub(c) for c in channels]
    done = threading.Event()

    def learned(k: int) -> int:
        return int(admins[k].GetModelInfo(pb.GetModelInfoRequest(), timeout=5).examples_learned)

    def poll() -> None:
        while not done.wait(POLL_INTERVAL):
            for k, times in enumerate(seen):
                try:
                    count = learned(k) - bases[k]
                except grpc.RpcError:
                    continue
                times.extend([time.perf_counter()] * (count - len(times)))

    try:
        bases = [learned(k) for k in range(len(ports))]
        seen: list[list[float]] = [[] for _ in ports]
        acked: list[float] = []
        poller = threading.Thread(target=poll, name="staleness-poll", daemon=True)
        poller.start()
        began = time.perf_counter()
        for i, request in enumerate(make_recommend_requests(seed, rewards)):
            time.sleep(max(0.0, began + i * REWARD_SPACING - time.perf_counter()))
            event_id = recommenders[i % len(ports)].Recommend(request, timeout=10).event_id
            feedback = pb.FeedbackRequest(event_id=event_id, reward=1.0, label="click")
            recommenders[(i + 1) % len(ports)].Feedback(feedback, timeout=10)
            acked.append(time.perf_counter())
        deadline = time.perf_counter() + STALENESS_TIMEOUT
        while any(len(times) < rewards for times in seen) and time.perf_counter() < deadline:
            time.sleep(0.05)
        done.set()
        poller.join()
        rose_by = tuple(learned(k) - bases[k] for k in range(len(ports)))
    finally:
        done.set()
        for channel in channels:
            channel.close()
    return Staleness(tuple(max(times[i] if i < len(times) else math.inf for times in seen) - t0
                           for i, t0 in enumerate(acked)), rose_by)


# -- the setups ----------------------------------------------------------------------------------------


def run_setups(workdir: Path, args: argparse.Namespace) -> tuple[list[Row], Staleness]:
    """The four setups in turn, each stopped (and its schema dropped) before the next starts."""
    rows: list[Row] = []
    target: Callable[[int], Target] = lambda port: Target(port, channels=CHANNELS)  # noqa: E731

    def jobs(*operations: str) -> Iterator[Job]:
        return (Job(op, TARGET_CONCURRENCY, args.seconds, args.warmup) for op in operations)

    with postgres_store(args.postgres, "one") as (url, backends), \
            closing(Servers(workdir / "one", backends)) as servers:
        port = servers.serve("server", "--store", url, "--seed", str(args.seed))
        with closing(ClientProcess(target(port), args.seed)) as client:
            rows += [measure(ONE, servers, client, job) for job in jobs(HEALTH, RECOMMEND)]
    with closing(Servers(workdir / "processes")) as servers:
        port = servers.serve("server", "--processes", "2", "--seed", str(args.seed), processes=2)
        with closing(ClientProcess(target(port), args.seed)) as client:
            rows += [measure(PROCESSES, servers, client, job) for job in jobs(HEALTH, RECOMMEND)]
    with postgres_store(args.postgres, "replicas") as (url, backends), \
            closing(Servers(workdir / "replicas", backends)) as servers:
        learner, log_file = servers.start("learner", "learn", "--store", url, "--reward-window", REWARD_WINDOW)
        servers.wait_for(learner, log_file, r"learning \(model")
        ports = [servers.serve(f"replica-{k}", "--role", "serve", "--store", url, "--seed", str(args.seed))
                 for k in (1, 2)]
        replicas = Target(ports[0], other_ports=(ports[1],), channels=CHANNELS // 2)
        with closing(ClientProcess(replicas, args.seed)) as client:
            rows += [measure(REPLICAS, servers, client, job) for job in jobs(RECOMMEND)]
        staleness = measure_staleness(ports, args.rewards, args.seed)
    with postgres_store(args.postgres, "alone") as (url, backends):
        settings = Settings(port=0, host=HOST, data_dir=str(workdir / "alone"), store=url,
                            reward_window=REWARD_WINDOW, seed=args.seed)
        with serving(settings) as running:
            rows.append(measure_feedback_alone(running, backends, args))
    return rows, staleness


# -- the report ----------------------------------------------------------------------------------------


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table, throughput over the ceiling's (the first row)."""
    ceiling = rows[0].result.rate
    lines = [f"| operation | setup | calls | calls/s | / ceiling | p50 ms | p99 ms | server CPU µs/call"
             f" | PostgreSQL CPU µs/call | client CPU µs/call | cores: server, PostgreSQL, client"
             f" | at most, all {CORES} cores busy |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, row in enumerate(rows):
        r = row.result
        name = f"{r.operation} (ceiling)" if i == 0 else r.operation + " (ran out of events)" * r.ran_out_of_events
        cores = (r.server_cpu_seconds, row.postgres_cpu_seconds, None if row.in_process else r.client_cpu_seconds)
        cells = (name, row.setup, f"{r.calls:,}", f"{r.rate:,.0f}",
                 "n/a" if row.in_process else f"{r.rate / ceiling:.2f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                 f"{r.server_cpu_us:,.0f}", _number(row.postgres_cpu_us),
                 _number(math.nan if row.in_process else r.client_cpu_us),
                 ", ".join("—" if c is None else f"{c / r.wall_seconds:.2f}" for c in cores),
                 f"{row.bound:,.0f} calls/s" if row.in_process else f"{row.bound / ceiling:.2f} of the ceiling")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Every row at concurrency {TARGET_CONCURRENCY}; the ceiling is Health/Check on one process. "
                  f"The gRPC rows' client: one process, {CHANNELS} connections in turn. 'At most': the machine's "
                  f"{CORES} cores over the row's CPU per call (server + PostgreSQL + client)."]
    for row in rows:
        if len(row.serving_cpu_seconds) > 1:
            shares = " / ".join(f"{cpu:.2f}" for cpu in row.serving_cpu_seconds)
            lines.append(f"{row.result.operation}, {row.setup}: CPU seconds of each serving process {shares} "
                         f"(how the kernel spread the connections).")
    return "\n".join(lines)


def _number(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:,.0f}"


def format_staleness(staleness: Staleness, rewards: int) -> str:
    """The staleness line: percentiles, the check of the counting, and what bounds it."""
    ordered = sorted(staleness.seconds)
    late = sum(1 for s in ordered if math.isinf(s))
    poll = Settings.model_fields["model_poll_interval"].default
    return (f"Model staleness ({REPLICAS}; {len(ordered)} rewards, one every {REWARD_SPACING:g} s, nothing else "
            f"running): p50 {percentile(ordered, 50):.2f} s, p99 {percentile(ordered, 99):.2f} s, "
            f"max {ordered[-1]:.2f} s"
            + (f" ({late} not learned within {STALENESS_TIMEOUT:g} s)" if late else "")
            + f"; examples_learned rose by {', '.join(map(str, staleness.rose_by))} on the replicas (expected "
              f"{rewards} each). Bound: the learner joins and learns every 0.5 s and publishes at most every "
              f"{SNAPSHOT_INTERVAL:g} s, a replica looks for a snapshot every {poll:g} s: about 2 s at worst, plus "
              f"writing and loading it.")


def format_targets(rows: Sequence[Row], staleness: Staleness) -> str:
    ceiling = rows[0].result.rate
    found = {(row.setup, row.result.operation): row for row in rows}
    processes, alone = found[(PROCESSES, RECOMMEND)], found[(ALONE, FEEDBACK)]
    p99 = percentile(sorted(staleness.seconds), 99)
    checks = [
        (f"Recommend, {PROCESSES}: >= {PROCESSES_MIN_RATIO:.2f} of the ceiling",
         f"{processes.result.rate / ceiling:.2f}", processes.result.rate / ceiling >= PROCESSES_MIN_RATIO,
         f"all {CORES} cores at its {processes.cpu_us:,.0f} µs per call allow {processes.bound / ceiling:.2f}"),
        (f"Feedback, {ALONE}: >= {FEEDBACK_MIN_RATE:,.0f} durable rewards/s", f"{alone.result.rate:,.0f}/s",
         alone.result.rate >= FEEDBACK_MIN_RATE,
         f"all {CORES} cores at its {alone.cpu_us:,.0f} µs per reward allow {alone.bound:,.0f}/s"),
        (f"Staleness p99 <= {STALENESS_MAX_P99:g} s", f"{p99:.2f} s", p99 <= STALENESS_MAX_P99, ""),
    ]
    lines = ["Targets:"]
    for wording, measured, met, bound in checks:
        lines.append(f"- {wording}: {measured} — {'MET' if met else 'MISSED'}" + (f" ({bound})" if bound else ""))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """``--seconds``, ``--warmup``, ``--rewards``, ``--seed``, ``--postgres``."""
    parser = argparse.ArgumentParser(prog="python -m server.bench_scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per row (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each row (default 1)")
    parser.add_argument("--rewards", type=int, default=50, help="rewards whose staleness is measured (default 50)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the traffic and the servers (default 7)")
    parser.add_argument("--postgres", default=os.environ.get("RECBANDIT_TEST_POSTGRES", POSTGRES),
                        help=f"database the PostgreSQL stores are schemas of (default {POSTGRES})")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 <= args.warmup <= 60 or not 1 <= args.rewards <= 1000:
        parser.error("--seconds must be within (0, 600], --warmup within [0, 60], --rewards within [1, 1000]")
    return args


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop every server and drop every schema on the way out


def main(argv: Sequence[str] | None = None) -> None:
    """Run the four setups on temporary data directories and schemas, then print the report."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.perf_counter()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"recbandit bench_scale: grpcio {grpc.__version__}, Python {platform.python_version()}, {CORES} cores, "
          f"load average {load}; {args.warmup:g} s warm-up + {args.seconds:g} s per row", flush=True)
    with tempfile.TemporaryDirectory(prefix="recbandit-bench-scale-") as workdir, \
            open(Path(workdir) / "bench.log", "w") as server_log:
        configure_logs("INFO", "text", access_log=True, stream=server_log)  # the in-process server of setup 4
        rows, staleness = run_setups(Path(workdir), args)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(format_table(rows))
    print()
    print(format_staleness(staleness, args.rewards))
    print()
    print(format_targets(rows, staleness))
    print(f"\nTotal {time.perf_counter() - began:.1f} s; load average at the end {load}.")


if __name__ == "__main__":
    main()
