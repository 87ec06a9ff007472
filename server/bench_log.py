"""Event-log benchmark: bytes of ``events.db`` per decision, then Recommend and Feedback against the ceiling.

Run with ``python -m server.bench_log`` (``make bench`` runs it after the serving benchmark). It uses
:mod:`server.bench`'s machinery: a real server (:func:`server.app.start`) on 127.0.0.1, port 0, with
a fresh data directory, driven by a client process started with ``multiprocessing`` *spawn*.

The storefront: a catalog of 1,000 items, written with one ``UpsertItems`` call, each with six
features (category, brand, price, two to four tags, a title, a rating). Every Recommend names 20
candidates drawn from the catalog by item id only (their features come from the catalog), with
ten user features and five context features as in :mod:`server.bench`, and ``num_results=1``;
requests vary over seeded users, contexts and candidate sets.

Size
    ``--decisions`` Recommends at ``--concurrency``; for a seeded 32% of them, right after its
    reply, one Feedback (reward 1.0, label ``click``). The server's reward window is
    :data:`REWARD_WINDOW_SECONDS`, so that, once it has passed and the windows are closed, every
    decision is final, as nearly all are in a server that has run for hours; the learner then
    learns everything final and the server stops cleanly (checkpoint, log closed). Reported:
    ``events.db`` bytes (with ``events.db-wal`` if one is left) divided by the decisions made; the
    same per table and per index, with the free pages, from SQLite's ``dbstat`` table when this
    Python's SQLite has it; and the average bytes of the ``decisions.record`` column.
Speed
    A second server on its own data directory, default settings, the same catalog. At
    ``--concurrency``: the ceiling (``grpc.health.v1.Health/Check``), Recommend with these
    catalog candidates, and Feedback over events Recommend made, each measured with
    :func:`server.bench.measure` (warm-up, then ``--seconds``): calls/s, p50/p99, throughput
    over the ceiling's in the same run, and CPU per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import grpc

from engine.logreader import EVENT_LOG
from engine.types import Item
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.app import RunningServer
from server.bench import (
    BRANDS,
    CATEGORIES,
    HEALTH,
    HOST,
    LEARN_TIMEOUT,
    NUM_USERS,
    RECOMMEND,
    REQUEST_POOL,
    BenchClient,
    ClientProcess,
    Job,
    Result,
    Target,
    format_table,
    make_item,
    make_user,
    make_visit,
    measure,
    measure_feedback,
    serving,
)
from server.client import RecbanditClient
from server.logs import configure as configure_logs
from server.settings import Settings

DECIDE = "decide"
CATALOG_SIZE = 1000
CANDIDATES = 20
FEEDBACK_SHARE = 0.32
REWARD_WINDOW_SECONDS = 5
TARGET_BYTES_PER_DECISION = 1000
MIN_DECIDE_SECONDS = 60.0
MIN_DECISIONS_PER_SECOND = 25.0
"""The size phase gives up after ``max(60 s, decisions / 25)``, and says how many it made."""
TAGS = ("new", "sale", "bestseller", "eco", "limited", "gift", "premium", "bundle", "outlet", "exclusive",
        "handmade", "vegan", "organic", "imported", "local", "seasonal")
WORDS = ("classic", "slim", "comfort", "sport", "urban", "travel", "studio", "outdoor", "essential", "pro")
NOUNS = ("jacket", "sneaker", "backpack", "lamp", "kettle", "headphones", "watch", "chair", "scarf", "bottle")


# -- the storefront: catalog and requests --------------------------------------------------------------


def catalog_item_id(index: int) -> str:
    return f"sku-{index:05d}"


def make_catalog(seed: int) -> list[Item]:
    """:data:`CATALOG_SIZE` items, each with six features: category, brand, price, tags, title, rating."""
    rng = random.Random(f"{seed}/catalog")
    items = []
    for index in range(CATALOG_SIZE):
        basics = make_item(rng)
        items.append(Item(catalog_item_id(index), {
            **basics,
            "tags": tuple(rng.sample(TAGS, rng.randint(2, 4))),
            "title": f"{basics['brand']} {rng.choice(WORDS)} {rng.choice(NOUNS)} {rng.randint(1, 99)}",
            "rating": round(rng.uniform(1.0, 5.0), 1),
        }))
    return items


def make_catalog_requests(seed: int, count: int = REQUEST_POOL) -> list[pb.RecommendRequest]:
    """``count`` Recommend requests whose :data:`CANDIDATES` candidates are catalog item ids only."""
    rng = random.Random(f"{seed}/requests")
    users = [(f"user-{i:05d}", make_user(rng)) for i in range(NUM_USERS)]
    item_ids = [catalog_item_id(index) for index in range(CATALOG_SIZE)]
    requests = []
    for _ in range(count):
        request = make_visit(rng, users)
        request.candidates.extend(pb.Candidate(item_id=item_id) for item_id in rng.sample(item_ids, CANDIDATES))
        requests.append(request)
    return requests


# -- the client process ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decided:
    """What the size phase's client did: decisions made, how many got Feedback, in how long."""

    decisions: int
    rewarded: int
    elapsed: float


class CatalogBenchClient(BenchClient):
    """:class:`server.bench.BenchClient` with catalog candidates, and the size phase's :data:`DECIDE` job."""

    def __init__(self, channel: grpc.aio.Channel, seed: int, token: str = "") -> None:
        super().__init__(channel, seed, token)
        self._rewarded = random.Random(f"{seed}/feedback")

    def make_requests(self, seed: int) -> list[pb.RecommendRequest]:
        return make_catalog_requests(seed)

    async def run(self, job: Job) -> Result | int | Decided:  # type: ignore[override]
        return await self.decide(job) if job.operation == DECIDE else await super().run(job)

    async def decide(self, job: Job) -> Decided:
        """``job.count`` Recommends from ``job.concurrency`` workers, each followed by its Feedback
        for a seeded :data:`FEEDBACK_SHARE` of them; stop early after ``job.seconds``."""
        made = rewarded = 0
        began = time.perf_counter()
        deadline = began + job.seconds

        async def worker() -> None:
            nonlocal made, rewarded
            while made < job.count and time.perf_counter() < deadline:
                request = self._requests[made % len(self._requests)]
                made += 1
                gets_feedback = self._rewarded.random() < FEEDBACK_SHARE
                event_id = (await self._recommend(request, metadata=self._metadata)).event_id
                if gets_feedback:
                    await self._feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label="click"),
                                         metadata=self._metadata)
                    rewarded += 1

        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        return Decided(made, rewarded, time.perf_counter() - began)


# -- the size of the log ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogSize:
    """``events.db`` after the server closed: its bytes, per table and index when ``dbstat`` exists."""

    decided: Decided
    file_bytes: int
    wal_bytes: int
    objects: tuple[tuple[str, str, int], ...] | None  # (table, index or "", bytes); None: no dbstat
    free_bytes: int
    record_bytes: float | None  # the average length of decisions.record; None: no such column
    open_windows: int | None

    @property
    def per_decision(self) -> float:
        return (self.file_bytes + self.wal_bytes) / self.decided.decisions


def read_log_size(path: Path, decided: Decided) -> LogSize:
    """Measure the closed log at ``path`` (read only; sizes are taken before it is opened)."""
    wal = path.with_name(path.name + "-wal")
    file_bytes, wal_bytes = path.stat().st_size, wal.stat().st_size if wal.exists() else 0
    with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free_bytes = conn.execute("PRAGMA freelist_count").fetchone()[0] * page_size
        return LogSize(decided, file_bytes, wal_bytes, _objects(conn), free_bytes,
                       _scalar(conn, "SELECT AVG(LENGTH(CAST(record AS BLOB))) FROM decisions"),
                       _scalar(conn, "SELECT COUNT(*) FROM decisions WHERE closed = 0"))


def _objects(conn: sqlite3.Connection) -> tuple[tuple[str, str, int], ...] | None:
    """Bytes of each table and index from ``dbstat``, tables in the log's order, each before its indexes."""
    try:
        sizes = dict(conn.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    except sqlite3.OperationalError:  # SQLite built without SQLITE_ENABLE_DBSTAT_VTAB
        return None
    schema = conn.execute("SELECT name, tbl_name, type FROM sqlite_schema")
    owners = {name: (table, kind) for name, table, kind in schema}
    order = {table: rank for rank, table in enumerate(("decisions", "rewards", "outcomes", "items"))}
    rows = []
    for name, size in sizes.items():
        table, kind = owners.get(name, (name, "table"))
        rows.append((table, "" if kind == "table" else name, int(size)))
    return tuple(sorted(rows, key=lambda row: (order.get(row[0], len(order)), row[0], row[1])))


def _scalar(conn: sqlite3.Connection, query: str) -> float | None:
    """The query's one value, or None when the log's tables do not have what it asks for."""
    try:
        return conn.execute(query).fetchone()[0]
    except sqlite3.OperationalError:
        return None


# -- the phases ----------------------------------------------------------------------------------------


def upsert_catalog(running: RunningServer, catalog: Sequence[Item]) -> None:
    """Write the catalog with one UpsertItems call, as a storefront's catalog job would."""
    with RecbanditClient(f"{HOST}:{running.port}", deadline=60.0) as client:
        written = client.upsert_items(catalog)
    if written != len(catalog):
        raise RuntimeError(f"UpsertItems wrote {written} of {len(catalog)} items")


def close_every_window(running: RunningServer) -> None:
    """Wait out the last decision's reward window, close every window, and learn what became final."""
    time.sleep(REWARD_WINDOW_SECONDS + 0.5)
    while running.engine.close_windows():
        pass
    running.engine.wait_until_learned(timeout=LEARN_TIMEOUT)


def measure_size(data_dir: Path, catalog: Sequence[Item], args: argparse.Namespace) -> LogSize:
    """The size phase: decisions and their Feedback, every window closed, the server stopped, the log measured."""
    settings = Settings(port=0, host=HOST, data_dir=str(data_dir), reward_window=f"{REWARD_WINDOW_SECONDS}s")
    budget = max(MIN_DECIDE_SECONDS, args.decisions / MIN_DECISIONS_PER_SECOND)
    with serving(settings) as running:
        upsert_catalog(running, catalog)
        with closing(ClientProcess(Target(running.port), args.seed, CatalogBenchClient)) as client:
            decided = client.ask(Job(DECIDE, args.concurrency, seconds=budget, count=args.decisions))
        assert isinstance(decided, Decided)
        print(f"  {decided.decisions:,} decisions ({decided.rewarded:,} with Feedback) in {decided.elapsed:.1f} s, "
              f"{decided.decisions / decided.elapsed:,.0f}/s; closing their reward windows, then stopping", flush=True)
        close_every_window(running)
    return read_log_size(data_dir / EVENT_LOG, decided)


def measure_speed(data_dir: Path, catalog: Sequence[Item], args: argparse.Namespace) -> list[Result]:
    """The speed phase: the ceiling, Recommend with catalog candidates and Feedback, on a fresh server."""
    with serving(Settings(port=0, host=HOST, data_dir=str(data_dir))) as running:
        upsert_catalog(running, catalog)
        with closing(ClientProcess(Target(running.port), args.seed, CatalogBenchClient)) as client:
            ceiling = measure(running, client, Job(HEALTH, args.concurrency, args.seconds, args.warmup))
            recommend = measure(running, client, Job(RECOMMEND, args.concurrency, args.seconds, args.warmup))
            feedback = measure_feedback(running, client, args.concurrency, args, ceiling.rate)
    return [ceiling, recommend, feedback]


# -- the report ----------------------------------------------------------------------------------------


def format_size(size: LogSize) -> str:
    """The log's bytes per decision: the headline, then a table by table and index, then the record."""
    decided, n = size.decided, size.decided.decisions
    verdict = "MET" if size.per_decision <= TARGET_BYTES_PER_DECISION else "MISSED"
    wal = f" + events.db-wal {size.wal_bytes:,}" if size.wal_bytes else " (no -wal left)"
    lines = [
        f"events.db after {n:,} decisions ({decided.rewarded:,} with Feedback), {CANDIDATES} catalog candidates "
        f"each, every reward window closed ({_count(size.open_windows)} open), server stopped:",
        f"  {size.file_bytes:,} bytes{wal} = {size.per_decision:,.0f} bytes per decision "
        f"(target <= {TARGET_BYTES_PER_DECISION:,}: {verdict})",
        f"  decisions.record: {_count(size.record_bytes, '{:,.0f}')} bytes per decision on average",
        "",
    ]
    if size.objects is None:
        return "\n".join([*lines, "  per table and index: unavailable (this SQLite has no dbstat table)"])
    lines += ["| table | index | bytes | bytes per decision |", "|---|---|---:|---:|"]
    for table, index, size_bytes in size.objects:
        lines.append(f"| {table} | {index or '—'} | {size_bytes:,} | {size_bytes / n:,.1f} |")
    lines.append(f"| (free pages) | — | {size.free_bytes:,} | {size.free_bytes / n:,.1f} |")
    if size.wal_bytes:
        lines.append(f"| (events.db-wal) | — | {size.wal_bytes:,} | {size.wal_bytes / n:,.1f} |")
    total = size.file_bytes + size.wal_bytes
    lines.append(f"| **total** | | {total:,} | {total / n:,.1f} |")
    return "\n".join(lines)


def _count(value: float | None, form: str = "{:,}") -> str:
    return "n/a" if value is None else form.format(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """``--decisions``, ``--seconds``, ``--warmup``, ``--concurrency``, ``--seed``."""
    parser = argparse.ArgumentParser(prog="python -m server.bench_log", description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions of the size phase (default 20000)")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per speed row (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds before each speed row (default 1)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight, both phases (default 16)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the catalog and the traffic (default 7)")
    args = parser.parse_args(argv)
    if args.decisions < 1 or not 1 <= args.concurrency <= 256:
        parser.error("--decisions must be at least 1 and --concurrency within [1, 256]")
    if not 0 < args.seconds <= 600 or not 0 <= args.warmup <= 60:
        parser.error("--seconds must be within (0, 600] and --warmup within [0, 60]")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the size phase, then the speed phase, each on its own server and data directory; print the report."""
    args = parse_args(argv)
    began = time.perf_counter()
    print(f"recbandit log bench: grpcio {grpc.__version__}, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"{args.decisions:,} decisions, then {args.warmup:g} s warm-up + {args.seconds:g} s per row "
          f"at concurrency {args.concurrency}", flush=True)
    catalog = make_catalog(args.seed)
    with tempfile.TemporaryDirectory(prefix="recbandit-bench-log-") as workdir, \
            open(Path(workdir) / "server.log", "w") as server_log:
        configure_logs("INFO", "text", access_log=True, stream=server_log)  # as `recbandit serve` logs
        size = measure_size(Path(workdir) / "size", catalog, args)
        speed = measure_speed(Path(workdir) / "speed", catalog, args)
    print()
    print(format_size(size))
    print()
    print(format_table(speed))
    print(f"\nThroughput targets: compare Recommend's and Feedback's ratios with a run of the code before the "
          f"change. Load average now {os.getloadavg()[0]:.2f}. Total {time.perf_counter() - began:.1f} s.")


if __name__ == "__main__":
    main()
