"""The simulated storefront: determinism, ground truth, the oracle, changes mid-run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from training.simulator import EXAMINATION, Storefront, WorldConfig


def test_the_same_seed_gives_the_same_catalog_visits_truth_and_reactions() -> None:
    a, b = Storefront(WorldConfig(seed=4)), Storefront(WorldConfig(seed=4))
    assert a.items == b.items
    visits_a, visits_b = a.visits(300), b.visits(300)
    assert visits_a == visits_b
    for visit in visits_a[::37]:
        assert np.array_equal(a.click_probabilities(visit), b.click_probabilities(visit))
        page = list(visit.candidates[: visit.slots])
        assert a.react(visit, page) == b.react(visit, page)
    assert Storefront(WorldConfig(seed=5)).visits(300) != visits_a


def test_a_slice_of_the_stream_is_the_same_as_the_whole_streams_visits() -> None:
    world = Storefront(WorldConfig(seed=1))
    assert world.visits(50, start=120) == world.visits(170)[120:]


def test_visits_come_in_sessions_of_one_user_with_distinct_candidates_and_surface_slots() -> None:
    world = Storefront(WorldConfig(seed=2))
    visits = world.visits(2000)
    assert [v.index for v in visits] == list(range(2000))
    for _, group in itertools.groupby(visits, key=lambda v: v.session):
        session = list(group)
        assert 1 <= len(session) <= 4
        assert len({v.user_id for v in session}) == 1
        assert len({(v.context["channel"], v.context["hour"]) for v in session}) == 1
    assert all(len(set(v.candidates)) == 20 for v in visits)
    assert {v.slots for v in visits} == {1, 2, 3}
    assert {v.slots for v in Storefront(WorldConfig(seed=2, multi_slot=False)).visits(200)} == {1}


def test_probabilities_are_probabilities_and_depend_on_user_and_context() -> None:
    world = Storefront(WorldConfig(seed=3))
    visits = world.visits(500)
    p = np.stack([world.click_probabilities(v) for v in visits])
    q = np.stack([world.purchase_probabilities(v) for v in visits])
    assert ((p > 0) & (p < 1)).all() and ((q > 0) & (q < 1)).all()
    best = {v.candidates[int(np.argmax(world.click_probabilities(v)))] for v in visits}
    assert len(best) > 50  # the best item differs between visits: there is something to personalise
    same_item = world.click_probabilities(visits[0], (visits[0].candidates[0],))[0]
    others = [world.click_probabilities(v, (visits[0].candidates[0],))[0] for v in visits[1:50]]
    assert np.std(others) > 0.02 and same_item == world.click_probabilities(visits[0])[0]


def test_the_oracle_page_beats_every_other_page_of_its_candidates() -> None:
    world = Storefront(WorldConfig(seed=6, candidates_per_visit=6))
    for visit in world.visits(40):
        best_clicks, _ = world.page_value(visit, world.oracle(visit))
        for page in itertools.permutations(visit.candidates, visit.slots):
            clicks, _ = world.page_value(visit, list(page))
            assert clicks <= best_clicks + 1e-12
        random_clicks, _ = world.random_page_value(visit)
        assert random_clicks < best_clicks


def test_reactions_follow_the_truth_with_position_effects() -> None:
    world = Storefront(WorldConfig(seed=8, multi_slot=True))
    visits = [v for v in world.visits(6000) if v.slots == 3]
    observed = np.zeros(3)
    expected = np.zeros(3)
    for visit in visits:
        page = list(visit.candidates[:3])
        observed += [clicked for clicked, _ in world.react(visit, page)]
        expected += np.array(EXAMINATION) * world.click_probabilities(visit, tuple(page))
    n = len(visits)
    assert n > 2000
    assert np.allclose(observed / n, expected / n, atol=0.02)
    assert observed[0] > observed[1] > observed[2]  # lower slots are looked at less


def test_new_items_go_on_sale_mid_run_and_tastes_drift_when_asked() -> None:
    config = WorldConfig(seed=9, new_items_at=500, new_items=10, drift_at=700)
    world = Storefront(config)
    visits = world.visits(1000)
    new = {item.item_id for item in world.new_items()}
    assert len(new) == 10 and len(world.initial_items()) == 200
    assert not any(new & set(v.candidates) for v in visits[:500])
    assert any(new & set(v.candidates) for v in visits[500:])
    steady = Storefront(WorldConfig(seed=9, new_items_at=500, new_items=10))
    for visit in visits[600:700]:
        assert np.array_equal(world.click_probabilities(visit), steady.click_probabilities(visit))
    changed = [not np.allclose(world.click_probabilities(v), steady.click_probabilities(v)) for v in visits[700:]]
    assert all(changed)


def test_a_world_needs_enough_items_for_its_pages() -> None:
    with pytest.raises(ValueError, match="candidates_per_visit"):
        Storefront(WorldConfig(n_items=10, candidates_per_visit=20))
