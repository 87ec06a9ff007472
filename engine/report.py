"""Is it learning? What the served policy earned against what others would have, from the same log.

The report reads the newest decisions of a time window whose reward windows have closed, so that
slot 0's reward is final whether the user responded or not (the ``outcomes`` table: a reward, or
the default one). While a reward window is open only rewarded slots are final, and counting them
alone would inflate the served reward. With ``r_i`` that reward, ``a_i`` the item served in slot
0, ``p_i = mu(a_i | x_i)`` its logged probability and ``K_i`` the decision's candidates:

- **observed**: the served policy's reward per decision, ``mean_i r_i``;
- **random**: uniform over the candidates, ``pi(a | x_i) = 1 / K_i``;
- **first_candidate**: the storefront's own order, ``pi(a | x_i) = 1[a = candidate 0]``. The logged
  candidates are those the bandit was offered: excluded and inactive items are already left out,
  and without request candidates the order is the LightFM retrieval's;
- **greedy**: the live model without exploration, ``pi(a | x_i) = 1[a in G_i] / |G_i|`` where
  ``G_i`` holds the candidates to which the live model's pmf gives the most (ties share). For
  squarecb, epsilon and softmax that is the argmax of the model's scores. The live model has
  learned from the very decisions it is scored on, so this estimate is in-sample and optimistic
  (a model that memorised noise looks good on its own training data);
- **greedy_at_decision**: the same rule on the pmf logged with each decision, i.e. the greedy
  choice of the model that decided, before it learned that decision's reward (progressive
  validation): out of sample, the honest estimate of what exploiting would earn.

Each policy is estimated by SNIPS (:class:`engine.ope.SNIPS`), ``V = sum_i w_i r_i / sum_i w_i``
with ``w_i = pi(a_i | x_i) / p_i``. The lift over random,

    L = mean_i r_i - sum_i w_i r_i / sum_i w_i,

has the per-decision terms ``d = r``, ``a = -w r``, ``b = w`` of :mod:`engine.ope.base`, so its
bootstrap interval comes from the same seeded resamples as the others' (a paired bootstrap).

The greedy policy's example is rebuilt from the logged decision exactly as the learner rebuilds it
(:func:`engine.bandit.shared_line`, :func:`engine.bandit.action_line` of the logged candidates). The
logged candidates carry the LightFM affinity features the decision was made with (``lightfm_*``,
which ``action_line`` puts in the ``Affinity`` namespace), so the lines are those the engine decided
on; with embeddings swapped since, the live model would see the new artifact's affinities, which
the report does not recompute. The live model keeps learning while the report scores: each
example is scored under the model's own lock, between learning steps.

The same decisions give the report's campaign section (:mod:`engine.campaign`, ``--control-share``):
per arm, and per channel and surface, the impressions, CTR, conversion rate and revenue per 1,000
impressions of the decisions shown, and recbandit's uplift over control with a 95% interval from
the users-resampled bootstrap, with the report's resamples and seed, over at most
:data:`MAX_CAMPAIGN_SEGMENTS` segments and :data:`MAX_CAMPAIGN_DRAWS` users drawn in all.

A verdict needs :data:`MIN_DECISIONS` decisions; the interval of the lift then decides it. When it
still includes 0 and the lift is positive, the interval's lower half-width ``h = L - lo`` shrinks
about as ``1/sqrt(n)``, so ``n' = n (h / L)^2`` decisions would put ``lo`` above 0: about
``n' - n`` more.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from engine.archive import Archive
from engine.bandit import VWBandit, action_line, shared_line
from engine.campaign import CampaignReport, CampaignTally
from engine.errors import InvalidRequest
from engine.eventlog import EventLog
from engine.ope import IPS, SNIPS, BanditFeedback, Bootstrap, Estimate, Estimator
from engine.ope.base import Terms
from engine.records import JoinedEvent, LoggedDecision
from engine.types import Candidate

DEFAULT_WINDOW_SECONDS = 86_400.0
MAX_WINDOW_SECONDS = 90 * 86_400.0
DEFAULT_MAX_DECISIONS = 10_000
MAX_DECISIONS = 50_000
MAX_CANDIDATES_SCORED = 1_000_000
"""The most candidates the live model scores for one report: the newest decisions up to this many."""
MIN_DECISIONS = 30
"""Fewer decisions than this get no verdict but "not yet distinguishable": their interval means little."""
MAX_CAMPAIGN_SEGMENTS = 16
"""The campaign section's segments at most, the whole window included: 3 channels × 3 surfaces and
their margins; past it the smallest are left out, with a note. Each costs a bootstrap of its users."""
MAX_CAMPAIGN_DRAWS = 20_000_000
"""The campaign bootstrap's users drawn per report, over every resample and segment: about a second
on 2 cores. Past it the resamples are cut (to no fewer than 200), with a note."""
POLICIES = ("random", "first_candidate", "greedy", "greedy_at_decision")
_BATCH = 500
_AT_EXAMPLES = re.compile(r"@\d+(?=\+|$)")


class Verdict(enum.Enum):
    LEARNING = "learning"
    NOT_YET_DISTINGUISHABLE = "not_yet_distinguishable"
    WORSE_THAN_RANDOM = "worse_than_random"
    NO_DATA = "no_data"


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """The window (seconds back from now; 0 means a day) and the most decisions to use (0 means 10,000)."""

    window_seconds: float = 0.0
    max_decisions: int = 0

    def resolved(self) -> ReportRequest:
        """The request with its defaults filled in; InvalidRequest naming the field when out of range."""
        window, most = self.window_seconds, self.max_decisions
        if not (math.isfinite(window) and 0 <= window <= MAX_WINDOW_SECONDS):
            raise InvalidRequest("window_seconds", f"must be within [0, {MAX_WINDOW_SECONDS:.0f}] seconds "
                                                   f"(0 means {DEFAULT_WINDOW_SECONDS:.0f}), got {window!r}")
        if not 0 <= most <= MAX_DECISIONS:
            raise InvalidRequest("max_decisions", f"must be within [0, {MAX_DECISIONS}] "
                                                  f"(0 means {DEFAULT_MAX_DECISIONS}), got {most}")
        return ReportRequest(window or DEFAULT_WINDOW_SECONDS, most or DEFAULT_MAX_DECISIONS)


@dataclass(frozen=True, slots=True)
class PolicyValue:
    """One comparison policy's estimated reward per decision."""

    policy: str
    estimator: str
    estimate: Estimate


@dataclass(frozen=True, slots=True)
class VersionReport:
    """What one model version (or the whole window) earned, against the comparison policies."""

    model_version: str
    decisions: int
    observed: Estimate | None  # None without data
    estimates: tuple[PolicyValue, ...]
    lift: Estimate | None
    verdict: Verdict
    summary: str
    more_decisions_needed: int


@dataclass(frozen=True, slots=True)
class LearningReport:
    window_start: float
    window_end: float
    overall: VersionReport
    versions: tuple[VersionReport, ...]  # the most recent first
    model_version: str  # the live model whose greedy policy is estimated
    campaign: CampaignReport | None = None  # per arm, channel and surface, over the same decisions


@dataclass(frozen=True)
class LiftOver(Estimator):
    """The served policy's mean reward minus ``baseline``'s estimate: ``mean(r) - V_baseline``.

    Built from ``baseline``'s own terms, so it is estimated, and resampled, like any estimator.
    """

    baseline: Estimator
    name = "lift"

    def terms(self, feedback: BanditFeedback) -> Terms:
        direct, weighted, normaliser = self.baseline.terms(feedback)
        served = feedback.reward if direct is None else feedback.reward - direct
        return Terms(served, -weighted, normaliser)

    def weights(self, feedback: BanditFeedback) -> np.ndarray:
        return self.baseline.weights(feedback)


@dataclass(frozen=True, slots=True)
class _Row:
    """Slot 0 of one logged decision, as the estimators read it."""

    version: str
    ts: float
    reward: float
    propensity: float
    candidates: int
    action: int  # the served item's index among the candidates
    greedy_probability: float  # the live model's greedy policy's probability of the served item
    deciding_greedy_probability: float  # the same of the model that decided, from the logged pmf


def learning_report(
    log: EventLog,
    bandit: VWBandit,
    model_version: str,
    request: ReportRequest,
    now: float,
    closing_lag: float = 1.0,
    bootstrap: Bootstrap = Bootstrap(),
    archive: Archive | None = None,
) -> LearningReport:
    """The report over ``request``'s window ending ``now`` (``request`` resolved: :meth:`ReportRequest.resolved`),
    the greedy policy being ``bandit``'s.

    Decisions whose reward window ended within ``closing_lag`` seconds of ``now`` are left out: the
    windows that ended are closed on a timer, and until then only their rewarded slots are final.
    The part of the window that retention deleted from the log is read from its ``archive``.
    """
    start = now - request.window_seconds
    campaign = CampaignTally(now - closing_lag)
    rows = list(_window_rows(log, archive, bandit, start, now - closing_lag, request.max_decisions, campaign))
    versions: dict[str, list[_Row]] = {}
    for row in rows:  # newest first, so versions come in order of their newest decision
        versions.setdefault(row.version, []).append(row)
    overall = version_report("all versions", rows, bootstrap)
    if len(versions) == 1:  # the one version's report is the overall one: no second bootstrap
        (name,) = versions
        reports: tuple[VersionReport, ...] = (dataclasses.replace(overall, model_version=name),)
    else:
        reports = tuple(version_report(name, group, bootstrap) for name, group in versions.items())
    shown = campaign.report(bootstrap.n_resamples, bootstrap.seed, MAX_CAMPAIGN_SEGMENTS, MAX_CAMPAIGN_DRAWS)
    return LearningReport(start, now, overall, reports, model_version, shown)


def _window_rows(
    log: EventLog, archive: Archive | None, bandit: VWBandit, start: float, closed_by: float, max_decisions: int,
    campaign: CampaignTally,
) -> Iterator[_Row]:
    """The newest decisions since ``start`` whose reward window ended by ``closed_by``, newest first,
    within the limits: from the log, then from the archive if the log ran out before ``start``.
    Each one's event is added to ``campaign`` too."""
    taken = scored = 0
    lines = _ActionLines()
    for event, reward in _settled(log, archive, start, closed_by):
        decision = event.decision
        campaign.add(event)
        yield _row(decision, reward, bandit, lines)
        taken += 1
        scored += len(decision.candidates)
        if taken >= max_decisions or scored >= MAX_CANDIDATES_SCORED:
            return


def _settled(
    log: EventLog, archive: Archive | None, start: float, closed_by: float
) -> Iterator[tuple[JoinedEvent, float]]:
    """Events since ``start`` whose window ended by ``closed_by``, with slot 0's final reward, newest first.

    Outcomes are read by ``seq`` downwards; an outcome is final after its decision, so the first
    one older than ``start`` ends the window (up to the commit order of simultaneous rewards). When
    the log's outcomes run out first, the older part of the window is what retention archived.
    """
    before: int | None = None
    seen: set[str] = set()  # an event archived but not yet deleted from the log is counted once
    while True:
        batch = log.settled_outcomes_before(before, slot=0, deadline=closed_by, limit=_BATCH)
        if not batch:
            break
        before = batch[-1].seq
        recent = [o for o in batch if o.ts >= start]
        events = {event.event_id: event for event in log.reader.events(o.event_id for o in recent)}
        for outcome in recent:
            event = events.get(outcome.event_id)
            if event is None or event.ts < start or not event.decision.slots:
                continue
            seen.add(event.event_id)
            yield event, outcome.reward
        if len(recent) < len(batch):
            return
    if archive is None:
        return
    for event in map(JoinedEvent.from_export, archive.records_newest_first(start=start)):
        decision = event.decision
        if decision.event_id in seen or not decision.slots or decision.deadline > closed_by:
            continue
        reward = event.reward(0)
        if reward is not None:
            yield event, reward


class _ActionLines:
    """:func:`engine.bandit.action_line` of logged candidates, each distinct one computed once per report.

    The key holds each value's type as well: ``True == 1.0``, but their VW tokens differ.
    """

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self._lines: dict[tuple[object, ...], str] = {}
        self._max_entries = max_entries

    def __call__(self, candidate: Candidate) -> str:
        features = candidate.features
        key = (candidate.item_id, tuple(features.items()), tuple(map(type, features.values())))
        line = self._lines.get(key)
        if line is None:
            if len(self._lines) >= self._max_entries:
                self._lines.clear()
            line = self._lines[key] = action_line(candidate.item_id, features)
        return line


def _row(decision: LoggedDecision, reward: float, bandit: VWBandit, lines: _ActionLines) -> _Row:
    served = decision.slots[0]
    item_ids = [c.item_id for c in decision.candidates]
    action = item_ids.index(served.item_id)
    shared = shared_line(decision.user_features, decision.context, decision.portrait)
    pmf = bandit.pmf(shared, [lines(c) for c in decision.candidates])
    return _Row(
        version=_AT_EXAMPLES.sub("", decision.model_version, count=1),
        ts=decision.ts,
        reward=reward,
        propensity=served.probability,
        candidates=len(item_ids),
        action=action,
        greedy_probability=_greedy_probability(pmf, action),
        deciding_greedy_probability=_greedy_probability(served.pmf, action),
    )


def _greedy_probability(pmf: Sequence[float], action: int) -> float:
    """``1[action in G] / |G|``, ``G`` the candidates to which ``pmf`` gives the most."""
    best = max(pmf)
    if pmf[action] < best - 1e-12:
        return 0.0
    return 1.0 / sum(1 for p in pmf if p >= best - 1e-12)


def version_report(name: str, rows: list[_Row], bootstrap: Bootstrap = Bootstrap()) -> VersionReport:
    """The observed reward, the comparison policies' estimates, the lift over random and the verdict."""
    n = len(rows)
    if n == 0:
        return VersionReport(name, 0, None, (), None, Verdict.NO_DATA,
                             "no data: no decision in the window has its reward window closed yet", 0)
    reward = np.array([r.reward for r in rows])
    propensity = np.array([r.propensity for r in rows])
    action = np.array([r.action for r in rows])
    targets = {
        "random": 1.0 / np.array([r.candidates for r in rows], dtype=float),
        "first_candidate": (action == 0).astype(float),
        "greedy": np.array([r.greedy_probability for r in rows]),
        "greedy_at_decision": np.array([r.deciding_greedy_probability for r in rows]),
    }
    observed = IPS().estimate(BanditFeedback(reward, propensity, target_probability=propensity), bootstrap)
    feedback = {policy: BanditFeedback(reward, propensity, target_probability=target)
                for policy, target in targets.items()}
    estimator = SNIPS()
    estimates = tuple(PolicyValue(policy, estimator.name, estimator.estimate(feedback[policy], bootstrap))
                      for policy in POLICIES)
    lift = LiftOver(estimator).estimate(feedback["random"], bootstrap)
    verdict, summary, more = judge(lift)
    return VersionReport(name, n, observed, estimates, lift, verdict, summary, more)


def judge(lift: Estimate) -> tuple[Verdict, str, int]:
    """The verdict on a lift over random, one line for people, and about how many more decisions it needs."""
    n, value, low, high = lift.n, lift.value, lift.ci_low, lift.ci_high
    interval = f"{value:.3f} [{low:.3f}, {high:.3f}]"
    if n < MIN_DECISIONS:
        more = max(MIN_DECISIONS - n, _more_needed(lift))
        return (Verdict.NOT_YET_DISTINGUISHABLE,
                f"not yet distinguishable after {n} decisions; about {more} more needed", more)
    if low > 0:
        return Verdict.LEARNING, f"learning: beats random by {interval}", 0
    if high < 0:
        return Verdict.WORSE_THAN_RANDOM, f"worse than random by {-value:.3f} [{-high:.3f}, {-low:.3f}]", 0
    more = _more_needed(lift)
    if more == 0:
        return (Verdict.NOT_YET_DISTINGUISHABLE,
                f"not yet distinguishable after {n} decisions; no lift over random so far: {interval}", 0)
    return (Verdict.NOT_YET_DISTINGUISHABLE,
            f"not yet distinguishable after {n} decisions; about {more} more needed", more)


def _more_needed(lift: Estimate) -> int:
    """``n (h / L)^2 - n`` with ``h = L - lo``, for a positive lift whose interval reaches 0; else 0."""
    if not lift.value > 0 or lift.ci_low > 0:
        return 0
    half_width = lift.value - lift.ci_low
    return max(1, math.ceil(lift.n * (half_width / lift.value) ** 2 - lift.n))
