"""PostgreSQL driver benchmark: psycopg 3 against asyncpg on the event log's workload.

Run with ``python -m server.bench_drivers --dsn postgresql://postgres@127.0.0.1:5432/test``.
asyncpg is no dependency of recbandit: install it by hand first, ``pip install asyncpg==0.32.0``
(psycopg comes with ``pip install "psycopg[binary]==3.3.9" psycopg-pool==3.3.3``). The script
creates its own schema (``recbandit_bench_drivers_<pid>``) and drops it at the end; before each
driver it lays the tables anew (recbandit's ``decisions``, ``rewards`` and ``outcomes`` with their
indexes), copies in :data:`PRELOAD` seeded decisions, and runs ``ANALYZE`` and ``CHECKPOINT``.

Three ways of driving the database, each with a pool of :data:`READERS` reader connections and
one dedicated writer connection:

psycopg
    The engine's threaded design as it is: a writer thread and reader threads, blocking calls.
    ``psycopg.Connection`` (autocommit, each transaction an explicit ``with conn.transaction()``)
    for the writer, ``psycopg_pool.ConnectionPool`` (autocommit connections) for the readers.
    Both use ``psycopg.RawCursor``: statements with PostgreSQL's own ``$1`` placeholders, the
    same text asyncpg gets. With ``%s`` placeholders (``--psycopg-placeholders pyformat``)
    psycopg parses a statement longer than 4,096 characters or with more than 50 parameters
    again at every execution, in Python: a multi-row INSERT of 16 or 128 rows pays that.
asyncpg bridged
    The same threads; asyncpg runs on an event loop of its own thread and every call crosses
    with ``asyncio.run_coroutine_threadsafe(...).result()``, whose cost is in the numbers.
asyncpg native
    For reference: the writer and readers are tasks on asyncpg's own loop (as if the engine were
    asynchronous throughout). The reader pool releases connections without asyncpg's default
    reset query, one round trip per release that psycopg's pool does not make either.

Measured, each for ``--seconds`` after a short warm-up, with fixed seeds, in two rounds (the
patterns in the order ABC, then CBA, each on fresh tables; the table pools both rounds):

write N=1/16/128
    Group commit: one writer commits batches of N decisions, each batch ONE transaction holding
    one multi-row ``INSERT ... ON CONFLICT DO NOTHING`` (rows of 9 columns, a ~500-byte record,
    an 81-byte pmf), ``synchronous_commit`` as the server has it (on). Durable rows/s, and the
    commit latency (BEGIN to COMMIT acknowledged) p50/p99. The writer makes its own batches:
    handing operations to it is the engine's work, the same whichever the driver.
reads
    Point reads of a whole decision by primary key from 4 reader threads (tasks): reads/s, p50/p99.
rewards
    The reward path: one transaction reads 64 events' state (``WHERE event_id = ANY(...)``) and
    inserts a rewards row and an outcomes row for each. Rewards/s, transaction p50/p99.
mixed
    The writer (N=16) and the 4 readers at once, as the server runs them.
CPU
    ``time.process_time()`` of this process (every thread) per row written, read or rewarded:
    recbandit shares one interpreter lock, so driver CPU is serving capacity lost.

The table ends with psycopg ÷ asyncpg for each number. The database server's own CPU is not
counted, and it shares the machine's cores, so run this on an otherwise idle machine. A run
takes about 90 s with the default ``--seconds 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import random
import string
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

try:
    import asyncpg
except ImportError:  # pragma: no cover - the docstring says how to install it
    asyncpg = None

SEED = 20261203
BATCH_SIZES = (1, 16, 128)
MIXED_BATCH = 16
READERS = 4
REWARD_BATCH = 64
PRELOAD = 20_000
PATTERNS = ("psycopg", "asyncpg bridged", "asyncpg native")
ROUNDS = PATTERNS + PATTERNS[::-1]
BODIES = 256
WARM_UP = 0.3
DECISION_COLUMNS = ("event_id", "ts", "deadline", "user_id", "chosen", "deferred", "model_version", "record", "pmf")
REWARD_COLUMNS = ("event_id", "item_id", "label", "value", "ts")
OUTCOME_COLUMNS = ("event_id", "slot", "item_id", "reward", "source", "ts")
TABLES = """
CREATE TABLE {s}.decisions (
    event_id text PRIMARY KEY, ts double precision NOT NULL, deadline double precision NOT NULL,
    user_id text NOT NULL, chosen text NOT NULL, deferred integer NOT NULL, activated_ts double precision,
    closed integer NOT NULL DEFAULT 0, model_version text NOT NULL, record text NOT NULL,
    undelivered integer NOT NULL DEFAULT 0, pmf bytea);
CREATE INDEX ON {s}.decisions (deadline) WHERE closed = 0;
CREATE INDEX ON {s}.decisions (user_id);
CREATE TABLE {s}.rewards (
    event_id text NOT NULL, item_id text NOT NULL, label text NOT NULL, value double precision NOT NULL,
    ts double precision NOT NULL, PRIMARY KEY (event_id, item_id, label));
CREATE TABLE {s}.outcomes (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id text NOT NULL, slot integer NOT NULL,
    item_id text NOT NULL, reward double precision NOT NULL, source text NOT NULL, ts double precision NOT NULL,
    UNIQUE (event_id, slot));
"""


class Workload:
    """Seeded decisions in the shape recbandit logs them; event ids count up from 0."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self._bodies = [self._body(rng) for _ in range(BODIES)]
        self._ids = itertools.count()

    @staticmethod
    def _body(rng: random.Random) -> tuple[Any, ...]:
        user = f"user-{rng.randrange(5000):05d}"
        chosen = f'["item-{rng.randrange(1000):04d}"]'
        record = '{"v":3,"features":"' + "".join(rng.choices(string.ascii_letters + string.digits, k=480)) + '"}'
        pmf = b"\x01" + struct.pack("<20f", *(rng.random() for _ in range(20)))
        return user, chosen, 0, "vw-" + rng.randbytes(6).hex(), record, pmf

    def decisions(self, n: int) -> list[tuple[Any, ...]]:
        rows = []
        for i in itertools.islice(self._ids, n):
            user, chosen, deferred, version, record, pmf = self._bodies[i % BODIES]
            ts = 1.8e9 + i / 100
            rows.append((f"{i:032x}", ts, ts + 600.0, user, chosen, deferred, version, record, pmf))
        return rows


def flat(rows: Sequence[Sequence[Any]]) -> list[Any]:
    return [value for row in rows for value in row]


def reward_rows(states: Sequence[Sequence[Any]], k: int) -> tuple[list[Any], list[Any]]:
    """Rewards and outcomes parameters for the events read: each event's chosen item, reward 1."""
    ts = 1.8e9 + k
    rewards = flat([(state[0], state[1], f"click-{k}", 1.0, ts) for state in states])
    outcomes = flat([(state[0], k, state[1], 1.0, "feedback", ts) for state in states])
    return rewards, outcomes


class Sql:
    """The statements, in a driver's placeholder style: ``%s`` (psycopg) or ``$n`` (asyncpg)."""

    def __init__(self, schema: str, numbered: bool) -> None:
        self.schema, self.numbered = schema, numbered
        mark = "$1" if numbered else "%s"
        self.read = (f"SELECT event_id, ts, deadline, user_id, chosen, deferred, activated_ts, closed, model_version,"
                     f" record, undelivered, pmf FROM {schema}.decisions WHERE event_id = {mark}")
        self.state = (f"SELECT event_id, chosen, deferred, activated_ts, closed, deadline FROM {schema}.decisions"
                      f" WHERE event_id = ANY({mark})")

    @functools.lru_cache(maxsize=None)
    def insert(self, table: str, columns: tuple[str, ...], rows: int) -> str:
        width = len(columns)
        if self.numbered:
            groups = ("(" + ", ".join(f"${r * width + c + 1}" for c in range(width)) + ")" for r in range(rows))
        else:
            groups = ("(" + ", ".join(["%s"] * width) + ")" for _ in range(rows))
        return (f"INSERT INTO {self.schema}.{table} ({', '.join(columns)}) VALUES {', '.join(groups)}"
                " ON CONFLICT DO NOTHING")


class Psycopg:
    """psycopg 3 as the threaded engine would hold it: a writer connection and a reader pool."""

    def __init__(self, dsn: str, schema: str, numbered: bool = True) -> None:
        self.sql = Sql(schema, numbered)
        options: dict[str, Any] = {"autocommit": True}
        if numbered:
            options["cursor_factory"] = psycopg.RawCursor
        self.writer = psycopg.connect(dsn, **options)
        self.pool = ConnectionPool(dsn, min_size=READERS, max_size=READERS, kwargs=options, open=True)
        self.pool.wait()

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        with self.writer.transaction():
            self.writer.execute(self.sql.insert("decisions", DECISION_COLUMNS, len(rows)), flat(rows))
        return len(rows)

    def read(self, event_id: str) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(self.sql.read, (event_id,)).fetchone()
        assert row is not None and len(row[11]) == 81
        return 1

    def reward(self, event_ids: list[str], k: int) -> int:
        with self.writer.transaction():
            states = self.writer.execute(self.sql.state, (event_ids,)).fetchall()
            rewards, outcomes = reward_rows(states, k)
            self.writer.execute(self.sql.insert("rewards", REWARD_COLUMNS, len(states)), rewards)
            self.writer.execute(self.sql.insert("outcomes", OUTCOME_COLUMNS, len(states)), outcomes)
        return len(states)

    def close(self) -> None:
        self.pool.close()
        self.writer.close()


async def _keep_session(connection: Any) -> None:
    """asyncpg pool reset that sends nothing (the readers change no session state)."""


class Asyncpg:
    """asyncpg, called on its own event loop: a writer connection and a reader pool."""

    def __init__(self, writer: Any, pool: Any, schema: str) -> None:
        self.sql = Sql(schema, numbered=True)
        self.writer, self.pool = writer, pool

    @classmethod
    async def open(cls, dsn: str, schema: str) -> Asyncpg:
        pool = await asyncpg.create_pool(dsn, min_size=READERS, max_size=READERS, reset=_keep_session)
        return cls(await asyncpg.connect(dsn), pool, schema)

    async def write(self, rows: list[tuple[Any, ...]]) -> int:
        async with self.writer.transaction():
            await self.writer.execute(self.sql.insert("decisions", DECISION_COLUMNS, len(rows)), *flat(rows))
        return len(rows)

    async def read(self, event_id: str) -> int:
        row = await self.pool.fetchrow(self.sql.read, event_id)
        assert row is not None and len(row[11]) == 81
        return 1

    async def reward(self, event_ids: list[str], k: int) -> int:
        async with self.writer.transaction():
            states = await self.writer.fetch(self.sql.state, event_ids)
            rewards, outcomes = reward_rows(states, k)
            await self.writer.execute(self.sql.insert("rewards", REWARD_COLUMNS, len(states)), *rewards)
            await self.writer.execute(self.sql.insert("outcomes", OUTCOME_COLUMNS, len(states)), *outcomes)
        return len(states)

    async def close(self) -> None:
        await self.pool.close()
        await self.writer.close()


class AsyncpgBridged:
    """:class:`Asyncpg` on an event-loop thread, called from the engine's threads."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="asyncpg-loop", daemon=True)
        self.thread.start()
        self.driver: Asyncpg = self._call(Asyncpg.open(dsn, schema))

    def _call(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()  # type: ignore[arg-type]

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        return self._call(self.driver.write(rows))  # type: ignore[no-any-return]

    def read(self, event_id: str) -> int:
        return self._call(self.driver.read(event_id))  # type: ignore[no-any-return]

    def reward(self, event_ids: list[str], k: int) -> int:
        return self._call(self.driver.reward(event_ids, k))  # type: ignore[no-any-return]

    def close(self) -> None:
        self._call(self.driver.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@dataclass
class Run:
    """What the workers of one measurement did: per worker, operations and latencies (seconds)."""

    ops: list[int]
    latencies: list[list[float]]
    elapsed: float
    cpu: float

    def __add__(self, other: Run) -> Run:
        return Run([a + b for a, b in zip(self.ops, other.ops)],
                   [a + b for a, b in zip(self.latencies, other.latencies)],
                   self.elapsed + other.elapsed, self.cpu + other.cpu)

    def part(self, workers: slice) -> tuple[int, list[float]]:
        return sum(self.ops[workers]), sorted(itertools.chain.from_iterable(self.latencies[workers]))


Step = Callable[[], Any]  # returns the operations done, or (asyncpg native) a coroutine that does


def run_threads(seconds: float, steps: Sequence[Step]) -> Run:
    """Each step in a loop on its own thread until ``seconds`` have passed."""
    ops, latencies = [0] * len(steps), [[] for _ in steps]
    start = threading.Barrier(len(steps) + 1)
    end = [0.0]

    def work(i: int) -> None:
        start.wait()
        while (began := time.perf_counter()) < end[0]:
            ops[i] += steps[i]()
            latencies[i].append(time.perf_counter() - began)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(steps))]
    for thread in threads:
        thread.start()
    cpu, began = time.process_time(), time.perf_counter()
    end[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    return Run(ops, latencies, time.perf_counter() - began, time.process_time() - cpu)


async def run_tasks(seconds: float, steps: Sequence[Step]) -> Run:
    """:func:`run_threads` with tasks on the running loop, for the native asyncpg pattern."""
    ops, latencies = [0] * len(steps), [[] for _ in steps]
    cpu, began = time.process_time(), time.perf_counter()
    end = began + seconds

    async def work(i: int) -> None:
        while (t := time.perf_counter()) < end:
            ops[i] += await steps[i]()
            latencies[i].append(time.perf_counter() - t)

    await asyncio.gather(*(work(i) for i in range(len(steps))))
    return Run(ops, latencies, time.perf_counter() - began, time.process_time() - cpu)


def phases(driver: Any, workload: Workload) -> dict[str, list[Step]]:
    """Every measurement's steps: the writer first, then any readers."""
    readers = [random.Random(SEED + i) for i in range(READERS)]
    rewards = random.Random(SEED - 1)
    reward_batches = itertools.count()

    def read(rng: random.Random) -> Step:
        return lambda: driver.read(f"{rng.randrange(PRELOAD):032x}")

    def write(n: int) -> Step:
        return lambda: driver.write(workload.decisions(n))

    def reward() -> Any:
        return driver.reward([f"{i:032x}" for i in rewards.sample(range(PRELOAD), REWARD_BATCH)], next(reward_batches))

    found: dict[str, list[Step]] = {f"write N={n}": [write(n)] for n in BATCH_SIZES}
    found["reads"] = [read(rng) for rng in readers]
    found["rewards"] = [reward]
    found["mixed"] = [write(MIXED_BATCH), *(read(rng) for rng in readers)]
    return found


def metrics(name: str, run: Run) -> dict[str, float]:
    """The table's numbers for one measurement (latencies in ms, CPU in µs per row or read)."""
    def summary(label: str, ops: int, lat: list[float], unit: str) -> dict[str, float]:
        return {f"{name} {unit}/s": ops / run.elapsed, f"{name} {label} p50 ms": 1e3 * lat[len(lat) // 2],
                f"{name} {label} p99 ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))]}

    writes, write_lat = run.part(slice(0, 1))
    reads, read_lat = run.part(slice(1, None))
    if name == "reads":
        found = summary("read", *run.part(slice(None)), "reads")
    elif name == "rewards":
        found = summary("txn", writes, write_lat, "rewards")
    else:
        found = summary("commit", writes, write_lat, "rows")
        if name == "mixed":
            found |= summary("read", reads, read_lat, "reads")
    found[f"{name} CPU µs/op"] = 1e6 * run.cpu / max(1, sum(run.ops))
    return found


def measure(driver: Any, seconds: float, loop: asyncio.AbstractEventLoop | None = None) -> dict[str, Run]:
    """Every measurement of :func:`phases`; with ``loop``, as tasks on it (asyncpg native)."""
    found: dict[str, Run] = {}
    for name, steps in phases(driver, Workload(SEED)).items():
        for span in (WARM_UP, seconds):
            found[name] = loop.run_until_complete(run_tasks(span, steps)) if loop else run_threads(span, steps)
    return found


def lay_tables(admin: psycopg.Connection[Any], schema: str) -> None:
    """Fresh tables with :data:`PRELOAD` decisions, analysed and checkpointed."""
    admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    admin.execute(f"CREATE SCHEMA {schema}")
    admin.execute(TABLES.format(s=schema))
    with admin.cursor().copy(f"COPY {schema}.decisions ({', '.join(DECISION_COLUMNS)}) FROM STDIN") as copy:
        for row in Workload(SEED).decisions(PRELOAD):
            copy.write_row(row)
    admin.execute(f"ANALYZE {schema}.decisions")
    admin.execute("CHECKPOINT")


def bench(dsn: str, seconds: float, numbered: bool = True) -> dict[str, dict[str, float]]:
    """Each pattern's numbers over :data:`ROUNDS` runs, in the order ABC CBA against drift in load."""
    schema = f"recbandit_bench_drivers_{os.getpid()}"
    runs: dict[str, dict[str, Run]] = {}
    with psycopg.connect(dsn, autocommit=True) as admin:
        try:
            for label in ROUNDS:
                lay_tables(admin, schema)
                found = measure_one(label, dsn, schema, seconds, numbered)
                runs[label] = {name: runs[label][name] + run for name, run in found.items()} if label in runs else found
        finally:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return {label: {k: v for name, run in found.items() for k, v in metrics(name, run).items()}
            for label, found in runs.items()}


def measure_one(label: str, dsn: str, schema: str, seconds: float, numbered: bool) -> dict[str, Run]:
    if label == "asyncpg native":
        loop = asyncio.new_event_loop()
        driver = loop.run_until_complete(Asyncpg.open(dsn, schema))
        try:
            return measure(driver, seconds, loop)
        finally:
            loop.run_until_complete(driver.close())
            loop.close()
    driver = Psycopg(dsn, schema, numbered) if label == "psycopg" else AsyncpgBridged(dsn, schema)
    try:
        return measure(driver, seconds)
    finally:
        driver.close()


def format_table(results: dict[str, dict[str, float]]) -> str:
    psy, bridged, native = (results[k] for k in ("psycopg", "asyncpg bridged", "asyncpg native"))
    lines = [f"{'measurement':<28}{'psycopg':>10}{'asyncpg':>10}{'asyncpg':>10}{'psy/apg':>9}{'psy/apg':>9}",
             f"{'':<28}{'threads':>10}{'bridged':>10}{'native':>10}{'bridged':>9}{'native':>9}"]
    for key, value in psy.items():
        lines.append(f"{key:<28}{value:>10.4g}{bridged[key]:>10.4g}{native[key]:>10.4g}"
                     f"{value / bridged[key]:>9.2f}{value / native[key]:>9.2f}")
    lines.append("psy/apg = psycopg ÷ asyncpg: above 1 favours psycopg for /s, below 1 for ms and µs.")
    return "\n".join(lines)


def describe(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        sync = conn.execute("SHOW synchronous_commit").fetchone()[0]  # type: ignore[index]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"PostgreSQL {server} (synchronous_commit={sync}); psycopg {psycopg.__version__} ({psycopg.pq.__impl__}),"
            f" asyncpg {asyncpg.__version__}; Python {sys.version.split()[0]}; {os.cpu_count()} CPUs; load {load}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each measurement, each round")
    parser.add_argument("--psycopg-placeholders", choices=("numbered", "pyformat"), default="numbered",
                        help="psycopg's statements: $1 through RawCursor (default) or %%s")
    args = parser.parse_args(argv)
    if asyncpg is None:
        parser.error("asyncpg is not installed: pip install asyncpg==0.32.0")
    print(describe(args.dsn))
    started = time.perf_counter()
    print(f"psycopg placeholders: {args.psycopg_placeholders}")
    print(format_table(bench(args.dsn, args.seconds, args.psycopg_placeholders == "numbered")))
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{time.perf_counter() - started:.0f} s; load {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
