"""Learning through the real gRPC API on a simulated storefront, with fixed seeds."""

from __future__ import annotations

import pytest

from training.demo import run_demo, summarise
from training.simulator import Storefront, WorldConfig
from training.storefront_client import StorefrontClient

pytestmark = pytest.mark.slow


def test_the_bandit_learns_a_user_dependent_best_item_and_approaches_the_oracle_while_random_stays_far_below(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(reward_window="1s", seed=3)
    storefront = StorefrontClient(client.channel, Storefront(WorldConfig(n_items=10, context_scale=0.0, seed=5)), report_misses=True)
    storefront.publish_catalog()
    rounds = storefront.play_many(3000, concurrency=1)
    last = summarise(rounds[-1000:], block=1000)[0]
    assert last.learned >= 0.85 * last.oracle, last
    assert last.random <= 0.6 * last.oracle, last
    first = summarise(rounds[:500], block=500)[0]
    assert last.ratio > first.ratio + 0.15  # it learned: the early rounds were far worse
    running.engine.wait_until_learned()
    counts = running.engine.log.counts()
    assert counts == {"decisions": 3000, "rewards": 3000, "outcomes": 3000, "items": 10}
    assert running.engine.model_info().examples_learned == 3000


def test_a_short_demo_agrees_with_its_event_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    blocks = run_demo(events=400, data_dir=tmp_path, seed=2, concurrency=2, quiet=True)
    assert [b.events for b in blocks] == [400]
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    with sqlite3.connect(tmp_path / "events.db") as db:
        (decisions,) = db.execute("SELECT COUNT(*) FROM decisions").fetchone()
        (clicks,) = db.execute("SELECT COUNT(*) FROM rewards WHERE label = 'click' AND value = 1.0").fetchone()
    assert decisions == 400
    assert clicks == round(blocks[0].click_through * 400)
