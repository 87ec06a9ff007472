"""The serving loop without transport: decide, record rewards, and the catalog and learning behind them.

:meth:`Engine.decide` asks the bandit for a pmf per slot, draws from it with a seeded draw, and
commits the decision to the event log before returning it. :meth:`Engine.record_reward` commits
a reward; when it makes a slot's reward final the background thread learns it
(:mod:`engine.learning`, which also closes reward windows and checkpoints). The items and the
candidates they offer are :mod:`engine.catalog`'s.

Multi-slot: slots are filled by sequential sampling without replacement. Slot ``k`` is one
``cb_explore_adf`` decision over the candidates not chosen for slots ``0..k-1``; its probability is
conditional on those earlier choices, and it is learned as that decision when its reward is final.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from engine.apprentice import Apprentice, ApprenticeConfig, ApprenticeStats, ServingMode, apprentice_pmf, \
    learned_apprentice_slots, model_choice
from engine.archive import Archive
from engine.bandit import AFFINITY_PREFIX, BanditConfig, VWBandit, action_line, shared_line, with_affinity
from engine.catalog import Catalog
from engine.checkpoint import Checkpoint
from engine.coldstart import ColdStart, ColdStartConfig
from engine.datadir import lock_data_dir, unusable
from engine.embeddings import Representation
from engine.errors import Busy, EventConflict, InvalidRequest, ModelNotReady, StartupRefused
from engine.eventlog import EventLog, Forgotten
from engine.logreader import EVENT_LOG
from engine.explain import Explainer, Explanation
from engine.exploration import draw, normalised, uniform_draw
from engine.features import EncodedCandidates, with_time_context
from engine.learning import Learner, RegisteredPolicy
from engine.liverules import LiveRules, RulesInfo, SlotPlan, pinned_choice
from engine.roles import ROLES, SNAPSHOTS_DIR, LeaseWatch, ModelFollower, StoreSnapshots, take_learner_lease
from engine.observer import Observer, model_id, report
from engine.portraits import Portrait, PortraitConfig, portrait_features
from engine.privacy import Pseudonymizer
from engine.campaign import in_control
from engine.records import CONTROL_ARM, RECBANDIT_ARM, LoggedDecision, Reward, SlotChoice, candidate_to_json, decision_to_json
from engine.report import LearningReport, ReportRequest, learning_report
from engine.retention import Retention
from engine.retraining import EmbeddingsFollower, EmbeddingsTrainer, Retraining
from engine.retrieval import EmbeddingsInfo, LiveEmbeddings, Loaded
from engine.rewards import RewardRules
from engine.types import Candidate, DecisionRequest, Features, Item, RewardReport, Status
from engine.validation import Limits, check_decision_request, check_id, check_reward_report


MODEL_AT_REST_TIMEOUT = 5.0
"""Seconds an explanation waits for learning to pause before it answers UNAVAILABLE."""
LEASE_LOST_EXIT = 3
CATALOG_POLL_INTERVAL = 0.5
"""Seconds between looks for catalog writes by other processes (roles serve and learn): within a second."""
COLD_START_INTERVAL = 5.0
"""Seconds between rankings of the cold-start slices (new outcomes in, popular and newest ranked again)."""
COLD_START_OUTCOMES = 200_000
"""Outcomes a starting engine reads back for the popular slice (the most recent; older ones weigh little)."""
RETRAINING_JOIN_TIMEOUT = 5.0
"""Seconds closing waits for a scheduled training; one still running then publishes nothing."""
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    data_dir: Path
    bandit: BanditConfig = field(default_factory=BanditConfig)
    rewards: RewardRules = field(default_factory=RewardRules)
    limits: Limits = field(default_factory=Limits)
    seed: int = 0
    checkpoint_interval: float = 60.0
    maintenance_interval: float = 0.5
    retrieval_top_n: int = 100  # candidates retrieved by LightFM score when a request sends none
    embeddings_poll_interval: float = 5.0  # seconds between looks at the embeddings manifest; 0: none
    user_id_key: bytes | None = None  # set: user ids are stored as HMAC-SHA256(key, user_id), never raw
    retention_seconds: float | None = None  # set: final, learned events older than this are deleted
    archive_dir: Path | None = None  # set (with retention): what retention deletes is archived here first
    store: str = ""  # a postgresql:// URL: the event log lives there; empty: events.db in data_dir
    role: str = "all"  # all: serve and learn; serve: decide and follow the learner's snapshots; learn (engine.roles)
    model_poll_interval: float = 1.0  # role serve: seconds between looks for a newer snapshot, and catalog changes
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)  # Recommend without candidates, unranked
    embeddings_retrain_interval: float = 0.0  # roles all and learn, with a trainer: seconds between looks; 0: never
    embeddings_retrain_min_interactions: int = 1000  # new positive rewards a training needs
    control_share: float = 0.0  # users (by a stable hash) served the storefront's own order: engine.campaign
    campaign: str = ""  # salts the hash: a new campaign draws its control users anew
    rules_file: Path | None = None  # set: business rules (engine.rules), reloaded when the file changes
    rules_poll_interval: float = 1.0  # seconds between looks at the rules file
    portraits: bool = True  # each decision sees the user's portrait (engine.portraits), kept as rewards arrive
    portrait_interests: tuple[str, ...] = PortraitConfig().interest_attributes  # item attributes that make interests
    apprentice: ApprenticeConfig = field(default_factory=ApprenticeConfig)  # --mode apprentice (engine.apprentice)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model_version: str
    examples_learned: int
    examples_pending: int
    bandit: BanditConfig
    vw_arguments: str
    last_checkpoint_ts: float | None
    rewards: RewardRules
    embeddings: EmbeddingsInfo | None = None
    registered_policy: RegisteredPolicy | None = None
    serving_mode: ServingMode = ServingMode()
    apprentice: ApprenticeStats | None = None  # None: this process does not learn (role serve)


class Engine:
    def __init__(self, config: EngineConfig, *, cancel_wait: threading.Event | None = None,
                 embeddings_trainer: EmbeddingsTrainer | None = None) -> None:
        """Open the store and start. A learner (role ``learn``) may wait for the store's lease as a
        standby: setting ``cancel_wait`` (a signal handler does) ends the wait with :class:`StartupRefused`.
        With ``embeddings_trainer`` and ``config.embeddings_retrain_interval``, the learner re-trains
        the embeddings on that schedule (:mod:`engine.retraining`)."""
        config.bandit.validate()
        config.cold_start.validate()
        config.rewards.validate()
        config.apprentice.validate()
        if config.role not in ROLES:
            raise StartupRefused(f"role must be one of {', '.join(ROLES)}, got {config.role!r}")
        self.config = config
        self._trainer = embeddings_trainer
        self.retraining: Retraining | None = None
        self._dir = Path(config.data_dir)
        self._stopping = threading.Event()
        self._releases: list[Callable[[], None]] = []  # undone by close, last first
        self.lease: LeaseWatch | None = None  # the store's learner lease (roles all and learn)
        with ExitStack() as undo:  # a failed start leaves the log closed and the directory unlocked
            serving_only = config.role == "serve"  # serving processes share the data directory (embeddings)
            try:
                self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as error:
                raise unusable(self._dir, error) from error
            if config.role == "all":  # the data directory first: its refusal names the process that has it
                self._hold(undo, lock_data_dir(self._dir).release)
            self.log = EventLog(config.store or self._dir / EVENT_LOG, config.rewards, join_later=serving_only)
            self._hold(undo, self.log.close)
            if not serving_only:  # one learner per store; a learner waits for the lease as a standby
                lease = take_learner_lease(self.log, wait=config.role == "learn", stopping=cancel_wait or self._stopping)
                self.lease = LeaseWatch(self.log, lease, self._stopping, _lease_lost)
                self._hold(undo, self.lease.release)
            if config.role == "learn":
                self._hold(undo, lock_data_dir(self._dir).release)
            self._start()
            undo.pop_all()

    def _hold(self, undo: ExitStack, release: Callable[[], None]) -> None:
        """``release`` when the engine closes, or at once if it fails to start."""
        undo.callback(release)
        self._releases.append(release)

    def _start(self) -> None:
        """The catalog, embeddings and model over the open log; re-learn what the log holds beyond the checkpoint."""
        config = self.config
        catalog_lock = threading.Lock()
        self.embeddings = LiveEmbeddings(self._dir, lambda: self._catalog.items.values(), catalog_lock)
        self._cold_start = ColdStart(config.cold_start, self.log.final_outcomes_after,
                                     start_after=max(0, self.log.last_outcome_seq() - COLD_START_OUTCOMES))
        self._catalog = Catalog(self.log.catalog, config.limits, catalog_lock, self.embeddings, self._cold_start)
        self._encoded = EncodedCandidates()
        self._portraits = self.log.portraits if config.portraits and config.role != "learn" else None
        self.log.portraits.config = PortraitConfig(interest_attributes=config.portrait_interests)
        self._pseudonym = Pseudonymizer(config.user_id_key) if config.user_id_key else None
        self.embeddings.load_if_present()
        self.rules = LiveRules(config.rules_file if config.role != "learn" else None, self.log.reader.decisions_since,
                               config.retention_seconds, config.rules_poll_interval)
        self.rules.start(self._stopping)
        self._retention = Retention(self.log, config.retention_seconds, _archive(config, self.log))
        self._learner: Learner | ModelFollower
        if config.role == "serve":
            self._learner = ModelFollower(self.log, StoreSnapshots(self.log, self._dir / SNAPSHOTS_DIR),
                                          config.bandit, self._stopping, config.model_poll_interval)
        else:
            self._learner_term = self.log.take_learner_term() if config.role == "learn" else None  # fences those before
            self._learner = Learner(
                self._dir, self.log, config.bandit, self._stopping,
                checkpoint_interval=config.checkpoint_interval, maintenance_interval=config.maintenance_interval,
                retention=self._retention,
                snapshots=StoreSnapshots(self.log, self._dir / SNAPSHOTS_DIR, term=self._learner_term,
                                         lost=_lease_lost) if config.role == "learn" else None,
            )
        self.apprentice = Apprentice(config.apprentice, self.log.meta, self.log.set_meta)
        if isinstance(self._learner, Learner):  # the learner tallies apprentice slots, and switches
            self.apprentice.seed(learned_apprentice_slots(self.log, self._learner.learned_seq, config.apprentice.window))
            self._learner.apprentice = self.apprentice
        self._learner.start()  # re-learn what the log holds beyond the checkpoint
        if config.role != "all":  # other processes write the catalog too
            threading.Thread(target=self._follow_catalog, name="catalog-follower", daemon=True).start()
        self._cold_start_thread = threading.Thread(target=self._rank_cold_start, name="cold-start", daemon=True)
        self._cold_start_thread.start()
        self._reporting = threading.Lock()
        self._explainer = Explainer(self.log.get_decision, lambda: self._learner.bandit,
                                    lambda: self._learner.at_rest(MODEL_AT_REST_TIMEOUT),
                                    config.limits)
        self.embeddings.watch(config.embeddings_poll_interval)
        self._embeddings_follower: EmbeddingsFollower | None = None
        if config.role == "serve":  # the learner's embeddings, wherever this replica runs
            self._embeddings_follower = EmbeddingsFollower(self.log, self.embeddings, self._dir,
                                                           poll_interval=max(config.model_poll_interval, 1.0),
                                                           stopping=self._stopping)
            self._embeddings_follower.start()
        elif self._trainer is not None and config.embeddings_retrain_interval > 0:
            self.retraining = Retraining(self.log, self.embeddings, self._trainer,
                                         interval=config.embeddings_retrain_interval,
                                         min_interactions=config.embeddings_retrain_min_interactions,
                                         stopping=self._stopping,
                                         term=self._learner_term)
            self.retraining.start()

    @property
    def bandit(self) -> VWBandit:
        return self._learner.bandit

    def _follow_catalog(self) -> None:
        """Roles serve and learn: take in the catalog writes of the store's other processes, and
        (role serve) the portraits they wrote (:meth:`engine.portraitstore.PortraitStore.follow`)."""
        failed = False
        while not self._stopping.wait(min(self.config.model_poll_interval, CATALOG_POLL_INTERVAL)):
            try:
                self._catalog.follow()
                if self._portraits is not None:  # the portraits other processes wrote, within a second
                    self._portraits.follow()
                self.apprentice.follow()  # a switch of mode, within a second
                failed = False
            except Exception as error:  # the store is away: serve the catalog in hand
                if not failed:
                    log.error("cannot follow the catalog's changes (serving the catalog in hand): %s", error)
                failed = True

    def _rank_cold_start(self) -> None:
        """Take in new outcomes and rank the cold-start slices after catalog writes, and every
        :data:`COLD_START_INTERVAL` seconds. A ranking reads the whole catalog, so after one the
        thread rests at least ten times as long as it took: a bulk catalog load costs it a tenth of
        a core at most. A catalog that every Recommend can take whole is not ranked at all."""
        while not self._stopping.is_set():
            began = time.thread_time()  # CPU time: a ranking that waits on the store rests no longer for it
            try:
                catalog = self._catalog
                self._cold_start.refresh(time.time(), catalog.items,
                                         rank=catalog.active_count > self.config.limits.max_candidates)
            except Exception as error:  # the store is away: the last ranking serves
                log.warning("cannot rank the cold-start candidates now: %s", error)
            if self._stopping.wait(min(10 * (time.thread_time() - began), COLD_START_INTERVAL)):
                return
            self._cold_start.wait_for_change(COLD_START_INTERVAL)

    @property
    def observer(self) -> Observer:
        return self._learner.observer

    def observe(self, observer: Observer) -> None:
        """Report commits, learned outcomes and undelivered decisions to ``observer`` from now on."""
        self._learner.observer = observer
        self.log.watch_commits(observer.committed)

    def learner_lag_seconds(self) -> float:
        """How long the oldest final outcome not yet learned has waited (0: the model is up to date)."""
        return self._learner.lag_seconds()

    def model_age_seconds(self) -> float:
        """Seconds since the served model last changed: learned an outcome or was replaced."""
        return max(0.0, time.time() - self._learner.updated)

    @property
    def registered_policy(self) -> RegisteredPolicy | None:
        return self._learner.served.registered_policy

    @property
    def model_version(self) -> str:
        return self._learner.model_version

    # -- Recommend -------------------------------------------------------------------------------

    def decide(self, request: DecisionRequest) -> LoggedDecision:
        """Choose items for ``request``, commit the decision to the log, and return it."""
        prepared = self._prepare_decision(request)
        if isinstance(prepared, LoggedDecision):
            return prepared
        return self._decided(prepared, self.log.append_decision(prepared.decision, prepared.record))

    async def decide_async(
        self,
        request: DecisionRequest,
        *,
        prepare_in_thread: bool = False,
        caller_gone: Callable[[], bool] | None = None,
    ) -> LoggedDecision:
        """:meth:`decide` for a coroutine: the event loop serves others while the decision commits.

        With ``prepare_in_thread`` the work before the commit (validation, features, the model's
        pmf) runs in a worker thread too: for large requests, so that they never hold the loop.

        A decision this call made whose caller is gone before the reply (``caller_gone()`` says so
        after the commit, or the call is cancelled while it commits) is marked undelivered: never
        learned with the default reward. A reward reported for it is still learned, and a retried
        Recommend with the same ``event_id`` gets it and marks it delivered.
        """
        if prepare_in_thread:
            prepared = await asyncio.to_thread(self._prepare_decision, request)
        else:
            prepared = self._prepare_decision(request)
        if isinstance(prepared, LoggedDecision):
            if prepared.undelivered:  # a retry fetched it: it reaches its caller now
                await self.log.mark_delivery_async(prepared, delivered=True)
                return dataclasses.replace(prepared, undelivered=False)
            return prepared
        try:
            logged = await self.log.append_decision_async(prepared.decision, prepared.record)
        except asyncio.CancelledError:  # the insert is queued and will commit: mark it after
            report(self.observer.undelivered)
            self.log.post_undelivered(prepared.decision)
            raise
        decided = self._decided(prepared, logged)
        if logged is prepared.decision and caller_gone is not None and caller_gone():
            report(self.observer.undelivered)
            await self.log.mark_delivery_async(logged, delivered=False)
        return decided

    def _prepare_decision(self, request: DecisionRequest) -> LoggedDecision | _Prepared:
        """Everything before the commit; an already logged event of ``request.event_id`` is returned as is."""
        if self._stopping.is_set():
            raise ModelNotReady("the engine is stopping")
        limits = self.config.limits
        check_decision_request(request, limits, self._encoded.known)
        if self._pseudonym is not None:
            request = dataclasses.replace(request, user_id=self._pseudonym(request.user_id))
        if request.event_id:
            existing = self.log.get_decision(request.event_id)
            if existing is not None:
                return self._same_event(existing, request)
        live = self.embeddings.current  # one artifact for the whole decision, whatever swaps meanwhile
        user = live.embeddings.user_representation(request.user_id, request.user_features) if live else None
        event_id = request.event_id or self._new_event_id()
        candidates = self._catalog.candidates(request, live, user, self.config.retrieval_top_n,
                                              f"{self.config.seed}:{event_id}")
        num_results = request.num_results or 1
        ts = time.time()
        context = with_time_context(request.context, ts)
        candidates, plan = self._ruled(request, context, candidates, num_results, ts)
        held = self._portraits.get(request.user_id) if self._portraits is not None else None  # read once a decision
        portrait = portrait_features(held, ts, context, self._portraits.config) if held is not None else {}
        shared = shared_line(request.user_features, context, portrait)
        encoded = [self._encoded.encode(c) for c in candidates]
        if live is not None:
            candidates, encoded = _with_affinity(live, user, candidates, encoded)
        actions = [line for line, _ in encoded]
        arm = CONTROL_ARM if in_control(request.user_id, self.config.control_share, self.config.campaign) else RECBANDIT_ARM
        apprentice: list[tuple[str, str] | None] | None = [] if arm == RECBANDIT_ARM and self.apprentice.serving else None
        slots = self._fill_slots(event_id, shared, actions, candidates, num_results, plan, baseline=arm == CONTROL_ARM,
                                 apprentice=apprentice)
        decision = LoggedDecision(
            event_id=event_id,
            ts=ts,
            user_id=request.user_id,
            user_features=dict(request.user_features),
            context=context,
            candidates=tuple(candidates),
            slots=slots,
            model_version=self.model_version if live is None else f"{self.model_version}+{live.version}",
            deferred=request.defer_activation,
            deadline=ts + self.config.rewards.window_seconds,
            arm=arm,
            portrait=portrait,
            apprentice=tuple(apprentice or ()),
        )
        record = decision_to_json(decision, [record for _, record in encoded])
        return _Prepared(decision, record, shared, actions, request, held)

    def _ruled(self, request: DecisionRequest, context: Features, candidates: list[Candidate], num_results: int,
               ts: float) -> tuple[list[Candidate], SlotPlan | None]:
        """The candidates the business rules leave, before anything is drawn or logged, and how the
        slots are filled (:mod:`engine.liverules`). More slots than the request's candidates is the
        request's fault; more than the rules leave is not (FAILED_PRECONDITION)."""
        if num_results > len(candidates):
            raise InvalidRequest(
                "num_results", f"must be at most the {len(candidates)} candidates left, got {num_results}"
            )
        if not (rules := self.rules.rules):  # one rule set for the whole decision, whatever reloads meanwhile
            return candidates, None
        offer = self.rules.offer(rules, request.user_id, request.user_features, context, candidates, num_results,
                                 ts, None if request.candidates else self._catalog.pinnable(request))
        return offer.candidates, offer.plan(num_results)

    def _decided(self, prepared: _Prepared, logged: LoggedDecision) -> LoggedDecision:
        if logged is prepared.decision:  # committed now (not an event id another call had logged)
            self._learner.remember(logged, prepared.shared, prepared.actions)
            self.rules.record(logged)
            if self._portraits is not None and prepared.portrait is not None:  # the one it was decided with
                self._portraits.visit(logged.user_id, prepared.portrait, logged.ts, logged.context, logged.event_id)
            report(self.observer.decided, model_id(logged.model_version), logged.arm)
        return self._same_event(logged, prepared.request)

    @staticmethod
    def _new_event_id() -> str:
        """32 hex digits, all 128 bits random: no event id tells another (one getrandom call, about 1 µs)."""
        return os.urandom(16).hex()

    def _fill_slots(  # type: ignore[no-untyped-def]
        self, event_id, shared, actions, candidates, num_results, plan: SlotPlan | None = None, *, baseline: bool = False,
        apprentice: list[tuple[str, str] | None] | None = None,
    ) -> tuple[SlotChoice, ...]:
        """Each slot drawn from its pmf over the candidates it may hold; ``plan``: pins, promotion
        shares and group caps (:class:`engine.liverules.SlotPlan`). With ``baseline`` (the control
        arm) each slot holds the first candidate it may, in the storefront's order, with
        probability 1: no model is asked. When overlapping group caps leave a slot nothing to hold
        (it depends on the earlier slots' draws), the decision has the slots before it. With ``apprentice`` (a list, apprentice mode) each slot is
        drawn from :func:`engine.apprentice.apprentice_pmf` instead, and the list gets each slot's
        baseline and model's choice (None for a pinned slot)."""
        remaining = list(range(len(candidates))) if plan is None else plan.open(len(candidates))
        slots = []
        bandit = self.bandit  # every slot from the same model, even if a new policy is swapped in meanwhile
        for slot in range(num_results):
            if plan is not None and (pinned := plan.pinned.get(slot)) is not None:
                slots.append(pinned_choice(candidates, pinned))
                if apprentice is not None:
                    apprentice.append(None)
                continue
            if not remaining:  # overlapping group caps spent by the earlier draws: the decision ends here, logged
                break              # whole, so that the draws that lead here are in the log like any other
            if baseline:
                chosen = remaining.pop(0)
                one = [0.0] * len(candidates)
                one[chosen] = 1.0
                slots.append(SlotChoice(candidates[chosen].item_id, 1.0, tuple(one)))
                if plan is not None:
                    plan.spend(chosen, remaining)
                continue
            scores = bandit.scores(shared, [actions[i] for i in remaining])
            pmf, plain = (normalised(scores), True) if plan is None else plan.pmf(slot, scores, remaining)
            if apprentice is not None:  # the baseline is served (and explored); the model's choice is kept
                model = remaining[model_choice(pmf, self.config.seed, event_id, slot)]
                apprentice.append((candidates[remaining[0]].item_id, candidates[model].item_id))
                mix = apprentice_pmf(len(remaining), self.config.apprentice.exploration)
                pmf, plain = (mix if plan is None else plan.pmf(slot, mix, remaining)[0]), False
            k = draw(pmf, uniform_draw(self.config.seed, event_id, slot))
            full, full_scores = [0.0] * len(candidates), [0.0] * len(candidates)
            for j, i in enumerate(remaining):
                full[i], full_scores[i] = pmf[j], scores[j]
            chosen = remaining.pop(k)
            slots.append(SlotChoice(candidates[chosen].item_id, pmf[k], tuple(full), tuple(full_scores) if plain else None))
            if plan is not None:
                plan.spend(chosen, remaining)
        return tuple(slots)

    @staticmethod
    def _same_event(existing: LoggedDecision, request: DecisionRequest) -> LoggedDecision:
        """The logged decision a retried Recommend gets back; another user's request learns nothing of it."""
        if existing.user_id != request.user_id:
            raise EventConflict(existing.event_id, "is in use by another request: choose another event_id")
        return existing

    # -- Feedback and Activate ---------------------------------------------------------------------

    def record_reward(self, report: RewardReport) -> Status:
        reward = self._reward(report)
        status = self._rewarded(self.log.append_reward(reward))
        if status is Status.NEW and (rewarded := self._rewarded_item(reward)) is not None:
            self._portraits.reward(*rewarded)  # type: ignore[union-attr]
        return status

    async def record_reward_async(self, report: RewardReport) -> Status:
        """:meth:`record_reward` for a coroutine."""
        reward = self._reward(report)
        status = self._rewarded(await self.log.append_reward_async(reward))
        if status is Status.NEW and reward.value > 0 and self._portraits is not None:  # reads the decision: not in the loop
            if (rewarded := await asyncio.to_thread(self._rewarded_item, reward)) is not None:
                await self._portraits.reward_async(*rewarded)
        return status

    def _reward(self, report: RewardReport) -> Reward:
        check_reward_report(report, self.config.limits)
        return Reward(report.event_id, report.item_id, report.label, report.reward, time.time())

    def _rewarded_item(self, reward: Reward) -> tuple[str, Reward, Features] | None:
        """The user, the reward and the rewarded item's features (as decided) that a new reward adds
        to a portrait; None when it adds nothing (portraits off, a reward of 0 or less)."""
        if self._portraits is None or reward.value <= 0:
            return None
        decision = self.log.get_decision(reward.event_id)
        if decision is None:  # forgotten meanwhile
            return None
        item_id = reward.item_id or decision.slots[0].item_id
        features = next((c.features for c in decision.candidates if c.item_id == item_id), {})
        return decision.user_id, reward, features

    def _rewarded(self, status: Status) -> Status:
        if status is Status.NEW:  # a new reward may be final: learn it
            self._learner.learn_soon()
        return status

    def activate(self, event_id: str) -> Status:
        check_id("event_id", event_id, self.config.limits)
        return self.log.activate(event_id, time.time())

    # -- privacy -------------------------------------------------------------------------------------

    def forget_user(self, user_id: str) -> ForgottenUser:
        """Delete what the log and memory hold about ``user_id`` (raw; pseudonymised here when on).

        The user's decisions, rewards and final outcomes leave the log in one transaction and the
        archive after it, their examples leave the learner's memory, and their identity leaves the
        embeddings in use. The bandit's weights are an aggregate over all users and are kept.
        """
        check_id("user_id", user_id, self.config.limits)
        stored_id = self._pseudonym(user_id) if self._pseudonym is not None else user_id
        forgotten = self._retention.forget_user(stored_id)
        self.rules.forget(stored_id)
        self._learner.forget(forgotten.log.event_ids)
        return ForgottenUser(forgotten.log, self.embeddings.forget_user(stored_id), forgotten.archived)

    def watch_storage(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(healthy)`` whenever writes to the event log start or stop failing."""
        self.log.watch_storage(on_change)

    # -- Catalog ---------------------------------------------------------------------------------

    def upsert_items(self, items: list[Item]) -> int:
        return self._catalog.upsert_items(items)

    def delete_items(self, item_ids: list[str]) -> int:
        return self._catalog.delete_items(item_ids)

    def list_items(self, page_size: int, page_token: str, active_only: bool) -> tuple[list[Item], str]:
        return self._catalog.list_items(page_size, page_token, active_only)

    # -- learning, windows, checkpoints (:class:`engine.learning.Learner`) -------------------------

    def learn_pending(self) -> int:
        """Learn every final outcome in the log beyond what the model has; return how many."""
        return self._learner.learn_pending()

    def wait_until_learned(self, timeout: float = 10.0) -> bool:
        """Block until every outcome committed so far is learned (tests and the demo use this)."""
        return self._learner.wait_until_learned(timeout)

    def close_windows(self) -> int:
        return self._learner.close_windows()

    def checkpoint(self) -> Checkpoint:
        return self._learner.checkpoint()

    def model_info(self) -> ModelInfo:
        learner = self._learner
        served, examples_learned = learner.served, learner.examples_learned  # one model, even mid-swap
        return ModelInfo(
            model_version=served.version(examples_learned),
            examples_learned=examples_learned,
            examples_pending=max(0, self.log.last_outcome_seq() - learner.learned_seq),
            bandit=served.bandit.config,
            vw_arguments=served.bandit.arguments,
            last_checkpoint_ts=learner.last_checkpoint,
            rewards=self.config.rewards,
            embeddings=live.info() if (live := self.embeddings.current) else None,
            registered_policy=served.registered_policy,
            serving_mode=self.apprentice.mode,
            apprentice=self.apprentice.tally.stats() if isinstance(learner, Learner) else None,
        )

    def set_serving_mode(self, mode: str) -> tuple[bool, ServingMode]:
        """Switch to ``mode`` (online or apprentice) in the store, for every process; whether it changed."""
        changed = self.apprentice.switch(mode, "Admin/SetServingMode")
        return changed, self.apprentice.mode

    def rules_info(self) -> RulesInfo:
        """The business rules in force, their file, when they were loaded, and the last failed load."""
        return self.rules.info()

    def learning_report(self, request: ReportRequest) -> LearningReport:
        """Is it learning? The served reward against random, the storefront's order and the live
        model's greedy choice, over the request's window (:mod:`engine.report`). Blocks: the live
        model scores every decision of the window, so a coroutine calls it in a worker thread. One
        report runs at a time, each may take seconds of CPU: another is refused (:class:`Busy`)."""
        request = request.resolved()  # refused before any work
        if not self._reporting.acquire(blocking=False):  # never queue seconds of CPU in the worker threads
            raise Busy("a learning report")
        try:
            learner = self._learner
            served, examples_learned = learner.served, learner.examples_learned  # one model, even mid-swap
            return learning_report(self.log, served.bandit, served.version(examples_learned), request, time.time(),
                                   closing_lag=2 * self.config.maintenance_interval, archive=self._retention.archive)
        finally:
            self._reporting.release()

    def explain(self, event_id: str, item_id: str = "", max_features: int = 0) -> Explanation:
        """Why the decision ``event_id`` offered ``item_id``: the pmf it was drawn from and the live
        weights of its features (:mod:`engine.explain`). Blocks: a coroutine calls it in a worker thread."""
        return self._explainer.explain(event_id, item_id, max_features)

    # -- hot swaps ---------------------------------------------------------------------------------

    def reload_embeddings(self) -> bool:
        """Swap in the newest embeddings artifact now, if it is not the one in use (see :mod:`engine.retrieval`)."""
        return self.embeddings.reload()

    def swap_policy(self, bandit: BanditConfig, model_path: str, policy: RegisteredPolicy) -> None:
        """Serve the registered policy's VW model from now on (:meth:`engine.learning.Learner.swap_policy`)."""
        self._learner.swap_policy(bandit, model_path, policy)

    def close(self) -> None:
        """Stop deciding, learn what is final, checkpoint, and close the log."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._cold_start.catalog_changed()  # its ranking thread stops now
        try:
            self._cold_start_thread.join()
            self.rules.join()
            if self._embeddings_follower is not None:
                self._embeddings_follower.join()
            if self.retraining is not None:  # a training under way finishes on its own, and publishes nothing
                self.retraining.join(timeout=RETRAINING_JOIN_TIMEOUT)
            self._learner.join()
            self.embeddings.close()
            if self.config.role != "serve":  # the learner's model: learn what is final, keep it
                self._learner.learn_pending()
                self._learner.checkpoint()
        finally:  # whatever failed, the next server may open the directory and the store
            for release in reversed(self._releases):
                release()


@dataclass(frozen=True, slots=True)
class ForgottenUser:
    """What :meth:`Engine.forget_user` removed."""

    log: Forgotten
    embedding_removed: bool
    archived: int = 0  # records removed from the archive


def _lease_lost() -> None:
    """The learner lease ended under a running learner (its store connection was cut): a standby may
    learn now, so this process stops writing at once; it exits, and whoever runs it starts it again
    (``serve --processes`` does), to wait as the standby."""
    log.critical("the learner lease of the store ended (its connection was cut): exiting so that one learner learns")
    logging.shutdown()
    os._exit(LEASE_LOST_EXIT)


def _archive(config: EngineConfig, log: EventLog) -> Archive | None:
    """The archive of ``log``: the one it has archived to, else ``config.archive_dir``; a different
    folder than the log's is refused, as is an archive without retention (nothing would go there).
    A serving process has none: the archive is the learner's (engine.retention)."""
    if config.role == "serve":
        return None
    recorded = log.reader.archive_dir()
    wanted = None if config.archive_dir is None else Path(config.archive_dir).resolve()
    if wanted is not None and config.retention_seconds is None:
        raise StartupRefused("--archive-dir keeps what --retention deletes: set --retention too")
    if wanted is not None and recorded is not None and wanted != recorded:
        raise StartupRefused(f"this event log archives to {recorded}, not {wanted}: "
                             f"pass --archive-dir {recorded}, or move that archive there first")
    if recorded is not None and not recorded.is_dir():
        raise StartupRefused(f"this event log archives to {recorded}, which is missing: put the archive back "
                             "there; without it its history and ForgetUser would be incomplete")
    directory = wanted or recorded
    return None if directory is None else Archive(directory, log.reader.log_id())


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A decision ready to commit, with its record and the VW lines it was decided from."""

    decision: LoggedDecision
    record: str
    shared: str
    actions: list[str]
    request: DecisionRequest  # as decided: with the pseudonymous user id when ids are pseudonymised
    portrait: Portrait | None = None  # the user's portrait as read for the decision (portraits on)


def _with_affinity(
    live: Loaded, user: Representation | None, candidates: list[Candidate], encoded: list[tuple[str, str]]
) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """The candidates with their LightFM affinity features for this user, and their lines and records.

    The features join each candidate (so the log holds them and learning or replay rebuild the
    same line) and go to the VW namespace ``Affinity`` (:func:`engine.bandit.affinity_segment`).
    They are per user: appended to the cached per-item encodings, never cached themselves.
    """
    assert user is not None
    affinity = live.embeddings.affinity_features(user, [c.item_id for c in candidates],
                                                 {c.item_id: c.features for c in candidates})
    out_candidates, out_encoded = [], []
    for candidate, (line, record), features in zip(candidates, encoded, affinity, strict=True):
        if features:
            own = any(name.startswith(AFFINITY_PREFIX) for name in candidate.features)
            candidate = Candidate(candidate.item_id, {**candidate.features, **features}, candidate.catalog)
            line = action_line(candidate.item_id, candidate.features) if own else with_affinity(line, features)
            record = candidate_to_json(candidate)
        out_candidates.append(candidate)
        out_encoded.append((line, record))
    return out_candidates, out_encoded
