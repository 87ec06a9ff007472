"""Learning through the real gRPC API on a simulated storefront, with fixed seeds."""

from __future__ import annotations

import re
import sqlite3

import pytest

from server.app import start
from server.client import RecbanditClient
from server.settings import Settings
from training.demo import run_demo, summarise
from training.simulator import Storefront, WorldConfig
from training.storefront_client import SIMULATED_DEADLINE, Behaviour, StorefrontClient

pytestmark = pytest.mark.slow

WIRING = {"serve": lambda **settings: start(Settings(**settings)), "connect": RecbanditClient}
"""What ``recbandit demo`` hands the demo: a server started from settings, and its client."""


def test_the_bandit_learns_a_user_dependent_best_item_and_approaches_the_oracle_while_random_stays_far_below(start_server) -> None:  # type: ignore[no-untyped-def]
    # The bandit alone (portraits, on by default, carry the users' history, which this world ignores;
    # with them the early rounds already reach 0.77 of the oracle, and the end 0.912)
    running, client = start_server(reward_window="1s", seed=3, portraits="off")
    world = Storefront(WorldConfig(n_items=10, candidates_per_visit=10, multi_slot=False, context_scale=0.0, seed=5))
    behaviour = Behaviour(feedback_delay=4, feedback_loss=0.0, deferred_channel="", report_purchases=False, report_misses=True)
    storefront = StorefrontClient(RecbanditClient(f"127.0.0.1:{running.port}", deadline=SIMULATED_DEADLINE), world, behaviour)
    # One storefront thread, the storefront's own event ids and learning finished after every round:
    # the same decisions on every run, however busy the machine (0.914 of the oracle at the end).
    pages = storefront.play(3000, concurrency=1, after_round=running.engine.wait_until_learned)
    last = summarise(pages[-1000:], block=1000)[0]
    assert last.learned >= 0.85 * last.oracle, last
    assert last.random <= 0.6 * last.oracle, last
    first = summarise(pages[:500], block=500)[0]
    assert last.ratio > first.ratio + 0.15  # it learned: the early rounds were far worse
    running.engine.wait_until_learned()
    assert running.engine.log.reader.counts() == {"decisions": 3000, "rewards": 3000, "outcomes": 3000, "items": 10}
    assert running.engine.model_info().examples_learned == 3000


def test_a_short_demo_agrees_with_its_event_log(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The learning table is the bandit arm's pages; the rule and the campaign table read the same log."""
    blocks = run_demo(events=400, data_dir=tmp_path, seed=2, concurrency=2, quiet=False, evaluate=False, **WIRING)
    assert [b.events for b in blocks] == [400]
    (b,) = blocks
    assert 0 < b.reported_clicks <= b.clicks
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000
    arm = "COALESCE(json_extract(record, '$.arm'), 'recbandit')"
    shown = "NOT (deferred = 1 AND activated_ts IS NULL) AND undelivered = 0"  # an email never opened is no impression
    with sqlite3.connect(tmp_path / "events.db") as db:
        decisions = dict(db.execute(f"SELECT {arm}, COUNT(*) FROM decisions GROUP BY 1").fetchall())
        clicks = dict(db.execute(f"SELECT {arm}, COUNT(*) FROM rewards JOIN decisions USING (event_id)"
                                 " WHERE label = 'click' AND value = 1.0 GROUP BY 1").fetchall())
        revenue = dict(db.execute(f"SELECT {arm}, SUM(value) FROM rewards JOIN decisions USING (event_id)"
                                  " WHERE label = 'purchase' GROUP BY 1").fetchall())
        (slots,) = db.execute("SELECT SUM(json_array_length(chosen)) FROM decisions").fetchone()
        control = db.execute(f"SELECT COUNT(DISTINCT user_id), SUM(json_array_length(chosen)) FROM decisions"
                             f" WHERE {arm} = 'control' AND {shown}").fetchone()
    assert sum(decisions.values()) == 400 and b.pages == decisions["recbandit"] and 10 < decisions["control"] < 80
    assert clicks["recbandit"] == b.reported_clicks  # the table counts the bandit arm's pages alone
    assert 0 < revenue["recbandit"] <= b.revenue + 1e-6  # purchases behind lost clicks are not reported
    assert slots > 400  # pages on the home and product surfaces have several slots
    printed = capsys.readouterr().out
    portraits = re.search(r"portraits: ([\d.]+)% of decisions saw the user's portrait .*; (user-\d+)'s, at their last "
                          r"visit: (.*)", printed)
    assert portraits is not None and 10 < float(portraits[1]) < 100  # a first visit has none
    assert "likes_" in portraits[3] or "since_last_visit=" in portraits[3], portraits[0]
    rule = re.search(r"premium items held ([\d.]+)% of the slots of email pages, ([\d.]+)% of the others'", printed)
    assert rule is not None and float(rule[1]) == 0 and float(rule[2]) > 10  # eligibility: none by email
    assert f"| * | * | control | {control[0]} | {control[1]} |" in printed
    uplift = re.search(r"\| \* \| \* \| \*\*uplift\*\* \| \| \| ([+-][\d.]+)% \[([+-][\d.]+)%, ([+-][\d.]+)%\]", printed)
    assert uplift is not None and float(uplift[2]) <= float(uplift[1]) <= float(uplift[3])  # CTR, with its interval


def test_the_demo_ends_with_an_evaluation_tracked_in_mlflow_and_a_champion(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from training.evaluate import DEFAULT_CANDIDATES
    from training.registry import CHAMPION, MODEL_NAME
    from training.tracking import EVALUATION_EXPERIMENT, default_tracking_uri, tracking_client

    run_demo(events=600, data_dir=tmp_path, seed=4, concurrency=2, quiet=True, evaluate=True, **WIRING)
    client = tracking_client(default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name(EVALUATION_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == len(DEFAULT_CANDIDATES) + 2  # the candidates, logging, uniform random
    assert all("dr/value" in r.data.metrics and r.data.metrics["dr/ci_low"] <= r.data.metrics["dr/value"] for r in children)
    champion = client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    assert str(champion.version) == "1"

    from training.embeddings import EMBEDDINGS_EXPERIMENT

    (trained,) = client.search_runs([client.get_experiment_by_name(EMBEDDINGS_EXPERIMENT).experiment_id])
    assert trained.info.status == "FINISHED" and "recall_at_10" in trained.data.metrics
    with sqlite3.connect(tmp_path / "events.db") as db:
        versions = [v for (v,) in db.execute("SELECT model_version FROM decisions ORDER BY ts")]
    with_embeddings = ["+embeddings-" in v for v in versions]
    assert with_embeddings == [False] * 300 + [True] * 300  # trained and loaded halfway, used from then on
