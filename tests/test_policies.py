"""Every policy of the quality benchmark behind one interface, and the benchmark's arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.bandit import EXPLORATION_PARAMETERS, BanditConfig
from training.bench_quality import (
    DEFAULT_POLICY,
    PEERS,
    StreamResult,
    make_policy,
    oracle_and_random,
    play_stream,
    format_seed_rows,
    seed_rows,
    summary_rows,
)
from training.policies import BanditPolicy, EnginePolicy
from training.simulator import Storefront, WorldConfig

CONFIG = WorldConfig(multi_slot=False, n_items=40, n_users=200, candidates_per_visit=8, seed=12)
NAMES = [f"recbandit {a}" for a in EXPLORATION_PARAMETERS] + [DEFAULT_POLICY] + list(PEERS)


def _run(name: str, visits, world):  # type: ignore[no-untyped-def]
    policy = make_policy(name, world, seed=5)
    choices = []
    for start in range(0, len(visits), 25):
        batch = visits[start : start + 25]
        chosen = policy.choose(batch)
        rewards = [float(world.react(v, [v.candidates[c.index]])[0][0]) for v, c in zip(batch, chosen, strict=True)]
        policy.learn(batch, chosen, rewards)
        choices.extend(chosen)
    policy.close()
    return choices


@pytest.mark.parametrize("name", NAMES)
def test_every_policy_returns_a_pmf_and_the_probability_of_its_choice_and_repeats_under_a_seed(name: str) -> None:
    world = Storefront(CONFIG)
    visits = world.visits(150)
    first = _run(name, visits, world)
    for visit, choice in zip(visits, first, strict=True):
        assert len(choice.pmf) == len(visit.candidates)
        assert math.isclose(sum(choice.pmf), 1.0, abs_tol=1e-6)
        assert all(p >= 0 for p in choice.pmf)
        assert choice.probability > 0
        assert math.isclose(choice.probability, choice.pmf[choice.index], rel_tol=1e-9)
    again = _run(name, visits, Storefront(CONFIG))
    assert [c.index for c in again] == [c.index for c in first]


def test_the_servers_default_plays_through_the_engine_and_the_other_bandits_through_its_copy() -> None:
    world = Storefront(CONFIG)
    default, copy = make_policy(DEFAULT_POLICY, world, seed=0), make_policy("recbandit squarecb:30 lr 1", world, seed=0)
    try:
        assert (type(default), default.name) == (EnginePolicy, "recbandit squarecb (engine)")
        assert isinstance(copy, BanditPolicy) and copy._bandit.config == BanditConfig(exploration_parameter=30.0,
                                                                                      learning_rate=1.0)
    finally:
        default.close()
        copy.close()


def test_the_bandit_learns_on_the_benchmark_stream_and_the_peers_rank_as_expected() -> None:
    events = 4000
    oracle, random = oracle_and_random(CONFIG, events)
    results = [play_stream(name, CONFIG, events) for name in ("recbandit squarecb", "uniform random", "oracle")]
    rows = {row["policy"]: row for row in summary_rows(results, oracle)}
    assert rows["oracle"]["whole"] == pytest.approx(1.0)
    assert rows["uniform random"]["last"] == pytest.approx(random[3200:].sum() / oracle[3200:].sum(), abs=0.05)
    assert rows["recbandit squarecb"]["last"] > rows["uniform random"]["last"] + 0.3
    assert rows["recbandit squarecb"]["last"] > rows["recbandit squarecb"]["whole"]  # it improves over the stream
    assert np.all(results[2].expected >= results[0].expected - 1e-12)  # nobody beats the oracle on any visit


def test_a_policy_played_on_several_seeds_gets_its_ratio_per_seed_their_mean_and_their_minimum() -> None:
    oracles = {0: np.ones(10), 1: np.full(10, 0.5)}
    played = [StreamResult("a", np.full(10, 0.9), np.ones(10), 2.0, seed=0),
              StreamResult("a", np.full(10, 0.4), np.zeros(10), 4.0, seed=1),
              StreamResult("b", np.full(10, 0.1), np.zeros(10), 1.0, seed=0)]  # one seed: no row
    (row,) = seed_rows(played, oracles)
    assert (row.policy, row.seeds) == ("a", (0, 1))
    assert row.last == pytest.approx((0.9, 0.8)) and row.whole == pytest.approx(0.85)
    assert (row.mean, row.min) == (pytest.approx(0.85), pytest.approx(0.8))
    assert "| a | 0.900 | 0.800 | **0.850** | **0.800** | 0.850 |" in format_seed_rows([row])
