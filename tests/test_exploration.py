"""Seeded draws: reproducible, faithful to the pmf, never on a zero entry."""

from __future__ import annotations

import collections

import pytest

from engine.exploration import draw, uniform_draw


def test_same_seed_event_and_slot_give_the_same_number() -> None:
    assert uniform_draw(3, "ev", 0) == uniform_draw(3, "ev", 0) == 0.3344180936298886  # the same in every process
    assert len({uniform_draw(3, "ev", 0), uniform_draw(4, "ev", 0), uniform_draw(3, "ev", 1)}) == 3


def test_draws_follow_the_pmf() -> None:
    pmf = [0.1, 0.0, 0.6, 0.3]
    counts = collections.Counter(draw(pmf, uniform_draw(0, f"e{i}", 0)) for i in range(20000))
    assert counts[1] == 0
    for index, p in enumerate(pmf):
        assert counts[index] / 20000 == pytest.approx(p, abs=0.015)


def test_zero_entries_are_never_drawn_even_at_the_edges() -> None:
    assert draw([0.0, 1.0, 0.0], 0.0) == 1
    assert draw([0.5, 0.5, 0.0], 0.9999999999) == 1
    assert draw([0.3, 0.3, 0.0], 0.99) == 1  # rounding left u past the total
    with pytest.raises(ValueError, match="no positive entry"):
        draw([0.0, 0.0], 0.5)
