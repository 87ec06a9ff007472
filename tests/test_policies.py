"""Every policy of the quality benchmark behind one interface, and the benchmark's arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engine.bandit import EXPLORATION_PARAMETERS
from training.bench_quality import PEERS, make_policy, oracle_and_random, play_stream, summary_rows
from training.simulator import Storefront, WorldConfig

CONFIG = WorldConfig(multi_slot=False, n_items=40, n_users=200, candidates_per_visit=8, seed=12)
NAMES = [f"recbandit {a}" for a in EXPLORATION_PARAMETERS] + list(PEERS)


def _run(name: str, visits, world):  # type: ignore[no-untyped-def]
    policy = make_policy(name, world, seed=5)
    choices = []
    for start in range(0, len(visits), 25):
        batch = visits[start : start + 25]
        chosen = policy.choose(batch)
        rewards = [float(world.react(v, [v.candidates[c.index]])[0][0]) for v, c in zip(batch, chosen, strict=True)]
        policy.learn(batch, chosen, rewards)
        choices.extend(chosen)
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
