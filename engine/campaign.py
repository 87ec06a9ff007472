r"""Did it pay? Campaign results per arm, channel and surface, with recbandit's uplift over control.

A campaign splits users into arms by a stable hash (``--control-share``): the **control** arm is
served the storefront's own order (the first candidate), the **recbandit** arm the bandit's choice.
For each arm, and within each channel and surface (context features), the report counts over the
decisions whose reward window has closed:

- **impressions**: filled slots;
- **CTR**: slots with a click-label reward above 0, per impression;
- **conversion rate**: slots with a purchase-label reward above 0, per impression;
- **revenue per 1,000 impressions**: the purchase-label rewards' values summed, × 1000 / impressions.

The **uplift** of a metric is recbandit's over control, relative: :math:`u = m_{rb} / m_{c} - 1`.
Arms are assigned per user, and one user's impressions are not independent of each other (the
same tastes, the same session), so its 95% interval comes from a bootstrap that resamples
*users*, within each arm, with a fixed seed: each resample draws every arm's users with
replacement and recomputes both ratios from their summed counts. A percentile interval that
excludes 0 says the difference is more than the users' variation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.records import CONTROL_ARM as CONTROL
from engine.records import RECBANDIT_ARM as RECBANDIT
from engine.records import JoinedEvent

METRICS = ("ctr", "conversion_rate", "revenue_per_mille")
MIN_RESAMPLES = 200
"""The fewest resamples a bounded report (``max_draws``) cuts to: a 95% interval's ends need some."""


def in_control(user_id: str, share: float, salt: str = "") -> bool:
    """Whether ``user_id`` is in the control arm of a campaign with this ``share``: a stable hash of
    the user id (and the campaign's ``salt``) mapped to [0, 1), so a user stays in one arm on every
    replica and across restarts, and about ``share`` of users are in control."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


@dataclass(frozen=True, slots=True)
class ArmCounts:
    """One arm's totals in one segment."""

    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    users: int = 0

    def metric(self, name: str) -> float:
        if self.impressions == 0:
            return math.nan
        return {"ctr": self.clicks, "conversion_rate": self.conversions,
                "revenue_per_mille": 1000.0 * self.revenue}[name] / self.impressions


@dataclass(frozen=True, slots=True)
class Uplift:
    """recbandit's relative uplift over control for one metric: the estimate and its 95% interval."""

    metric: str
    estimate: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """One segment (``channel``, ``surface``; ``*`` for all): each arm's counts and the uplifts."""

    channel: str
    surface: str
    arms: Mapping[str, ArmCounts]
    uplifts: tuple[Uplift, ...] = ()


@dataclass(frozen=True, slots=True)
class CampaignReport:
    segments: tuple[SegmentResult, ...]
    decisions: int
    click_labels: tuple[str, ...]
    purchase_labels: tuple[str, ...]
    resamples: int
    notes: tuple[str, ...] = field(default=())

    def overall(self) -> SegmentResult:
        return next(s for s in self.segments if s.channel == "*" and s.surface == "*")


@dataclass
class _UserTotals:
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0


class CampaignTally:
    """The per-user totals of a campaign report, by segment and arm, added one event at a time: what
    :func:`campaign_report` sums over a log, and the learning report over its window
    (:mod:`engine.report`), without keeping the events.

    An event counts when its reward window closed by ``closed_by`` and it was shown: it has slots,
    it is not a deferred decision that was never activated, and its caller did not leave before
    the reply (``undelivered``). ``arm_of`` names an event's arm.
    """

    def __init__(
        self,
        closed_by: float,
        arm_of: Callable[[JoinedEvent], str] = lambda event: event.decision.arm,
        *,
        click_labels: Sequence[str] = ("click",),
        purchase_labels: Sequence[str] = ("purchase",),
        channel_feature: str = "channel",
        surface_feature: str = "surface",
    ) -> None:
        self.closed_by = closed_by
        self.arm_of = arm_of
        self.click_labels = tuple(click_labels)
        self.purchase_labels = tuple(purchase_labels)
        self.channel_feature = channel_feature
        self.surface_feature = surface_feature
        self.decisions = 0
        # (channel, surface) -> arm -> user -> totals; "*" rows hold every channel and surface
        self._table: dict[tuple[str, str], dict[str, dict[str, _UserTotals]]] = {}

    def add(self, event: JoinedEvent) -> None:
        decision = event.decision
        shown_to_nobody = (decision.deferred and event.activated_ts is None) or decision.undelivered
        if decision.deadline > self.closed_by or not decision.slots or shown_to_nobody:
            return
        self.decisions += 1
        arm = self.arm_of(event)
        channel = str(decision.context.get(self.channel_feature, ""))
        surface = str(decision.context.get(self.surface_feature, ""))
        shown = {slot.item_id for slot in decision.slots}
        first = decision.slots[0].item_id
        clicked = {r.item_id or first for r in event.rewards if r.label in self.click_labels and r.value > 0}
        bought = [r for r in event.rewards if r.label in self.purchase_labels and r.value > 0]
        converted = {r.item_id or first for r in bought}
        revenue = sum(r.value for r in bought)
        for key in {("*", "*"), (channel, "*"), ("*", surface), (channel, surface)}:
            totals = self._table.setdefault(key, {}).setdefault(arm, {}).setdefault(decision.user_id, _UserTotals())
            totals.impressions += len(decision.slots)
            totals.clicks += len(clicked & shown)
            totals.conversions += len(converted & shown)
            totals.revenue += revenue

    def report(self, resamples: int = 1000, seed: int = 0, max_segments: int = 50,
               max_draws: int | None = None) -> CampaignReport:
        """Each segment's counts per arm and uplifts. Segments beyond ``max_segments`` (by
        impressions) are left out, with a note; the overall one (``*``, ``*``) always stays.

        ``max_draws`` bounds the bootstrap's work, one draw being one user drawn in one resample of
        one segment: the resamples are cut to fit it, to no fewer than :data:`MIN_RESAMPLES`.
        """
        table = self._table
        notes = []
        keys = sorted(table, key=lambda k: -sum(t.impressions for arm in table[k].values() for t in arm.values()))
        if len(keys) > max_segments:
            notes.append(f"{len(keys) - max_segments} smaller segments left out")
            keys = [k for k in keys if k == ("*", "*")] + [k for k in keys if k != ("*", "*")][: max_segments - 1]
        users = sum(len(arm) for k in keys for arm in table[k].values())
        if max_draws is not None and resamples * users > max_draws:
            resamples = min(resamples, max(MIN_RESAMPLES, max_draws // users))
            notes.append(f"{resamples} resamples, to bound the work over {users} users of the segments")
        rng = np.random.default_rng(seed)
        segments = tuple(_segment(key, table[key], resamples, rng) for key in sorted(keys))
        return CampaignReport(segments, self.decisions, self.click_labels, self.purchase_labels, resamples,
                              tuple(notes))


def campaign_report(
    events: Iterable[JoinedEvent],
    arm_of: Callable[[JoinedEvent], str] = lambda event: event.decision.arm,
    *,
    closed_by: float,
    click_labels: Sequence[str] = ("click",),
    purchase_labels: Sequence[str] = ("purchase",),
    channel_feature: str = "channel",
    surface_feature: str = "surface",
    resamples: int = 1000,
    seed: int = 0,
    max_segments: int = 50,
) -> CampaignReport:
    """The report over ``events`` (see :class:`CampaignTally` for which count)."""
    tally = CampaignTally(closed_by, arm_of, click_labels=click_labels, purchase_labels=purchase_labels,
                          channel_feature=channel_feature, surface_feature=surface_feature)
    for event in events:
        tally.add(event)
    return tally.report(resamples, seed, max_segments)


def _segment(key: tuple[str, str], arms: Mapping[str, Mapping[str, _UserTotals]], resamples: int,
             rng: np.random.Generator) -> SegmentResult:
    counts = {arm: _counts(users) for arm, users in arms.items()}
    uplifts: tuple[Uplift, ...] = ()
    if RECBANDIT in arms and CONTROL in arms:
        uplifts = _uplifts(_matrix(arms[RECBANDIT]), _matrix(arms[CONTROL]), resamples, rng)
    return SegmentResult(key[0], key[1], counts, uplifts)


def _counts(users: Mapping[str, _UserTotals]) -> ArmCounts:
    t = list(users.values())
    return ArmCounts(sum(u.impressions for u in t), sum(u.clicks for u in t), sum(u.conversions for u in t),
                     sum(u.revenue for u in t), len(t))


def _matrix(users: Mapping[str, _UserTotals]) -> np.ndarray:
    """Per user: impressions, then the counts of :data:`METRICS` (clicks, conversions, revenue)."""
    return np.array([(u.impressions, u.clicks, u.conversions, u.revenue) for u in users.values()], dtype=np.float64)


def _metrics(sums: np.ndarray) -> np.ndarray:
    """Each of :data:`METRICS` (its ×1000 left out: it cancels in an uplift) from summed counts (..., 4)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return sums[..., 1:] / sums[..., :1]


def _uplifts(treated: np.ndarray, control: np.ndarray, resamples: int, rng: np.random.Generator) -> tuple[Uplift, ...]:
    """Each metric's uplift with its percentile interval; every resample draws each arm's users with
    replacement once, and all three metrics are computed from that draw."""
    with np.errstate(divide="ignore", invalid="ignore"):
        estimates = _metrics(treated.sum(axis=0)) / _metrics(control.sum(axis=0)) - 1.0  # NaN or inf: control has none
    if resamples <= 0 or len(treated) < 2 or len(control) < 2:
        return tuple(Uplift(m, float(e), math.nan, math.nan) for m, e in zip(METRICS, estimates, strict=True))
    draws = []
    chunk = max(1, min(100, 2_000_000 // (len(treated) + len(control))))  # about 64 MB of rows at a time
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        t = treated[rng.integers(0, len(treated), size=(size, len(treated)))].sum(axis=1)
        c = control[rng.integers(0, len(control), size=(size, len(control)))].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            draws.append(_metrics(t) / _metrics(c) - 1.0)
    values = np.concatenate(draws)
    uplifts = []
    for metric, estimate, column in zip(METRICS, estimates, values.T, strict=True):
        finite = column[np.isfinite(column)]
        if len(finite) < resamples / 2:  # control without any event of this kind in most resamples
            uplifts.append(Uplift(metric, float(estimate), math.nan, math.nan))
            continue
        low, high = np.percentile(finite, [2.5, 97.5])
        uplifts.append(Uplift(metric, float(estimate), float(low), float(high)))
    return tuple(uplifts)
