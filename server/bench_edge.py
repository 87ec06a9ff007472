"""Edge benchmark: what a maximum-size request and a flood of calls cost everybody else.

Run with ``python -m server.bench_edge`` (``make bench`` runs it after the serving benchmark).
The parent process serves (:func:`server.app.start`, 127.0.0.1, port 0, a fresh data directory,
default limits); a spawned client process drives it with ``grpc.aio``, so that neither's Python
work waits for the other's interpreter lock.

``large``
    Small Recommends (the serving benchmark's requests) at ``--concurrency`` for ``--seconds``,
    first alone, then while another task sends maximum-size Recommends back to back (just under
    ``--max-request-bytes``, far more candidates than allowed, so each is refused with
    ``INVALID_ARGUMENT``). The p50/p99 of the small calls are compared.
``flood``
    ``--flood`` callers on one channel, each sending Recommends back to back for ``--seconds``,
    so that about that many calls are in flight all the time. Calls past ``--max-in-flight`` get
    ``RESOURCE_EXHAUSTED`` from recbandit; gRPC's transport itself cancels some calls of a burst
    before any servicer sees them (``CANCELLED``). The report gives the count of each status, the
    p50/p99 of the accepted calls, and the server's resident memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import grpc

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.app import start
from server.bench import HOST, make_recommend_requests, percentile
from server.logs import configure as configure_logs
from server.settings import Settings


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def maximum_size_request(max_bytes: int) -> pb.RecommendRequest:
    """A Recommend just under ``max_bytes``, made of as many tiny candidates as fit."""
    request = pb.RecommendRequest(user_id="flooder")
    per_candidate = len(pb.Candidate(item_id="i000000").SerializeToString()) + 2
    for j in range((max_bytes - 64) // per_candidate):
        request.candidates.add(item_id=f"i{j:06d}")
    return request


async def _small_calls(stub: pb_grpc.RecommenderStub, requests: list[pb.RecommendRequest],
                       concurrency: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        n = offset
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            await stub.Recommend(requests[n % len(requests)])
            latencies.append(time.perf_counter() - began)
            n += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies


async def _large_requests(stub: pb_grpc.RecommenderStub, request: pb.RecommendRequest, stop: asyncio.Event) -> Counter:
    codes: Counter = Counter()
    while not stop.is_set():
        try:
            await stub.Recommend(request)
            codes["OK"] += 1
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1
    return codes


async def _client(port: int, args: argparse.Namespace) -> dict[str, object]:
    async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
        stub = pb_grpc.RecommenderStub(channel)
        requests = make_recommend_requests(args.seed, 2000)
        await _small_calls(stub, requests, args.concurrency, 1.0)  # warm-up
        alone = sorted(await _small_calls(stub, requests, args.concurrency, args.seconds))
        large = maximum_size_request(args.max_request_bytes)
        stop = asyncio.Event()
        flooding = asyncio.create_task(_large_requests(stub, large, stop))
        beside = sorted(await _small_calls(stub, requests, args.concurrency, args.seconds))
        stop.set()
        large_codes = await flooding

        flood: list[tuple[str, float]] = []
        deadline = time.perf_counter() + args.seconds

        async def caller(offset: int) -> None:
            n = offset
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    await stub.Recommend(requests[n % len(requests)], timeout=60)
                    flood.append(("OK", time.perf_counter() - began))
                except grpc.aio.AioRpcError as error:
                    flood.append((error.code().name, time.perf_counter() - began))
                n += args.flood

        await asyncio.gather(*(caller(j) for j in range(args.flood)))
    accepted = sorted(t for code, t in flood if code == "OK")
    return {
        "alone": alone, "beside": beside, "large_codes": large_codes, "large_bytes": large.ByteSize(),
        "large_candidates": len(large.candidates), "flood_codes": Counter(code for code, _ in flood),
        "accepted": accepted,
    }


def _client_main(port: int, args: argparse.Namespace, conn) -> None:  # type: ignore[no-untyped-def]
    conn.send(asyncio.run(_client(port, args)))


def _ms(values: Sequence[float], q: float) -> str:
    return f"{percentile(values, q) * 1e3:.2f} ms" if values else "-"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.bench_edge", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--flood", type=int, default=2000)
    parser.add_argument("--max-in-flight", type=int, default=Settings().max_in_flight)
    parser.add_argument("--max-request-bytes", type=int, default=Settings().max_request_bytes)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recbandit-bench-edge-") as workdir, \
            open(Path(workdir) / "server.log", "w") as server_log:
        configure_logs("INFO", "text", access_log=True, stream=server_log)  # as `recbandit serve` logs
        running = start(Settings(host=HOST, port=0, data_dir=f"{workdir}/data", max_in_flight=args.max_in_flight,
                                 max_request_bytes=args.max_request_bytes))
        try:
            rss_before = resident_mb()
            parent, child = multiprocessing.get_context("spawn").Pipe()
            process = multiprocessing.get_context("spawn").Process(target=_client_main, args=(running.port, args, child))
            process.start()
            report = parent.recv()
            process.join()
            rss_after = resident_mb()
        finally:
            running.stop(grace=1.0)
    alone, beside = report["alone"], report["beside"]
    print(f"recbandit edge bench: {args.concurrency} concurrent small Recommends, {args.seconds:g} s per phase")
    print(f"  alone:                         p50 {_ms(alone, 0.5)}, p99 {_ms(alone, 0.99)} ({len(alone)} calls)")
    print(f"  beside maximum-size requests:  p50 {_ms(beside, 0.5)}, p99 {_ms(beside, 0.99)} ({len(beside)} calls); "
          f"the large ones ({report['large_bytes']:,} bytes, {report['large_candidates']:,} candidates): "
          f"{dict(report['large_codes'])}")
    if alone and beside:
        print(f"  p99 difference: {(percentile(beside, 0.99) - percentile(alone, 0.99)) * 1e3:+.2f} ms")
    accepted = report["accepted"]
    print(f"{args.flood} callers for {args.seconds:g} s, --max-in-flight {args.max_in_flight}: "
          f"{dict(report['flood_codes'])}; "
          f"accepted p50 {_ms(accepted, 0.5)}, p99 {_ms(accepted, 0.99)}")
    print(f"server resident memory: {rss_before:.0f} MB before the client, {rss_after:.0f} MB after "
          f"({rss_after - rss_before:+.0f} MB)")


if __name__ == "__main__":
    main()
