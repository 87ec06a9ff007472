"""The serving benchmark's arithmetic: percentiles, CPU per call, the CPU bound and the targets."""

from __future__ import annotations

import math

import pytest

from server.bench import (
    FEEDBACK,
    HEALTH,
    RECOMMEND,
    RECOMMEND_METRICS,
    RECOMMEND_TLS,
    HandlerResult,
    Result,
    combined,
    format_breakdown,
    format_table,
    ratio_bound,
    percentile,
    target_checks,
    throughput_ratio,
)


def row(operation: str, rate: float, *, client_us: float, server_us: float, p99_ms: float = 1.0,
        concurrency: int = 16) -> Result:
    calls = int(rate * 4)
    return Result(operation, concurrency, calls, 4.0, 0.5, p99_ms, all_calls=calls,
                  client_cpu_seconds=calls * client_us / 1e6, server_cpu_seconds=calls * server_us / 1e6,
                  wall_seconds=4.0)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_cpu_per_call_and_cores_busy() -> None:
    r = row(RECOMMEND, 1000, client_us=400, server_us=1200)
    assert r.client_cpu_us == pytest.approx(400)
    assert r.server_cpu_us == pytest.approx(1200)
    assert r.cores_busy == pytest.approx(1000 * (400 + 1200) / 1e6)
    assert math.isnan(Result(RECOMMEND, 16, 0, 1.0, 0, 0).client_cpu_us)


def test_breakdown_splits_the_servicer_from_the_rest() -> None:
    results = [row(HEALTH, 2000, client_us=350, server_us=500), row(RECOMMEND, 800, client_us=400, server_us=1300)]
    handlers = [HandlerResult(RECOMMEND, calls=1000, elapsed=0.7, cpu_seconds=0.6)]
    text = format_breakdown(results, handlers)
    assert "| Recommend | 400 | 1,300 | 600 | 700 | 1,429 |" in text
    assert "| Health/Check | 350 | 500 | — | 500 | — |" in text


def test_ratio_bound_scales_to_every_core_busy() -> None:
    # the ceiling: 2,000 calls/s at 850 µs each keeps 1.7 cores busy; with 2 cores Recommend at
    # 1,700 µs per call does at most 2 / 1,700 µs = 1,176 calls/s, i.e. 0.588 of 2,000
    ceiling = row(HEALTH, 2000, client_us=350, server_us=500)
    recommend = row(RECOMMEND, 800, client_us=400, server_us=1300)
    assert ceiling.cores_busy == pytest.approx(1.7)
    assert ratio_bound(ceiling, recommend, cores=2) == pytest.approx(0.5882, abs=1e-4)
    assert ratio_bound(ceiling, recommend, cores=4) == pytest.approx(1.1765, abs=1e-4)


def test_targets_are_judged_at_concurrency_16() -> None:
    results = [row(HEALTH, 2000, client_us=1, server_us=1), row(RECOMMEND, 1300, client_us=1, server_us=1, p99_ms=4.9),
               row(FEEDBACK, 2999, client_us=1, server_us=1)]
    verdicts = {wording: met for wording, _, met in target_checks(results)}
    assert verdicts == {
        "Recommend throughput >= 60% of the ceiling": True,
        "Recommend p99 <= 5 ms": True,
        "Feedback >= 3,000 calls/s": False,
    }


def test_recommend_over_tls_is_a_ratio_to_plaintext_recommend_at_the_same_concurrency() -> None:
    results = [row(HEALTH, 2000, client_us=1, server_us=1), row(RECOMMEND, 800, client_us=1, server_us=1),
               row(RECOMMEND_TLS, 720, client_us=1, server_us=1),
               row(RECOMMEND, 500, client_us=1, server_us=1, concurrency=1),
               row(RECOMMEND_TLS, 400, client_us=1, server_us=1, concurrency=1)]
    assert throughput_ratio(results[0], results) == pytest.approx(1.0)
    assert throughput_ratio(results[1], results) == pytest.approx(0.4)
    assert throughput_ratio(results[2], results) == pytest.approx(0.9)
    assert throughput_ratio(results[4], results) == pytest.approx(0.8)
    assert throughput_ratio(results[3], results) is None  # no ceiling measured at concurrency 1
    table = format_table(results)
    assert "| Recommend over TLS with a token | 16 | 2,880 | 720 | 0.50 | 1.00 | 0.90 |" in table
    assert "| Recommend | 1 | 2,000 | 500 | 0.50 | 1.00 | n/a |" in table


def test_alternating_windows_combine_into_one_row_and_metrics_are_compared_with_plaintext() -> None:
    first = row(RECOMMEND, 1000, client_us=200, server_us=900, p99_ms=20.0)
    second = row(RECOMMEND, 500, client_us=200, server_us=1100, p99_ms=30.0)
    both = combined([first, second])
    assert (both.calls, both.elapsed, both.rate) == (6000, 8.0, 750.0)
    assert both.p99_ms == 30.0 and both.p50_ms == pytest.approx(0.5)
    assert both.server_cpu_us == pytest.approx((4000 * 900 + 2000 * 1100) / 6000)
    metered = combined([row(RECOMMEND_METRICS, 700, client_us=200, server_us=1000)] * 2)
    assert throughput_ratio(metered, [both, metered]) == pytest.approx(700 / 750)
    assert "| Recommend with metrics on | 16 |" in format_table([both, metered])
