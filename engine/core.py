"""The serving loop without transport: decide, record rewards, learn, checkpoint.

:meth:`Engine.decide` asks the bandit for a pmf per slot, draws from it with a seeded draw, and
commits the decision to the event log before returning it. :meth:`Engine.record_reward` commits
a reward; when it makes a slot's reward final the background thread learns it. That thread also
closes reward windows (default rewards, ``sum`` aggregation) and checkpoints the model, and it
learns from the log's ``outcomes`` in ``seq`` order — the same code path re-learns after a restart.

Multi-slot: slots are filled by sequential sampling without replacement. Slot ``k`` is one
``cb_explore_adf`` decision over the candidates not chosen for slots ``0..k-1``; its probability is
conditional on those earlier choices, and it is learned as that decision when its reward is final.
"""

from __future__ import annotations

import base64
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.bandit import AFFINITY_PREFIX, BanditConfig, VWBandit, action_line, affinity_segment, shared_line
from engine.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from engine.errors import EventConflict, InvalidRequest, ModelNotReady, PreconditionFailed
from engine.embeddings import Representation
from engine.eventlog import SQLiteEventLog
from engine.exploration import draw, uniform_draw
from engine.features import EncodedCandidates, frozen_features, merge_features, with_time_context
from engine.records import LoggedDecision, Outcome, Reward, SlotChoice, candidate_to_json, decision_to_json
from engine.retrieval import EmbeddingsInfo, LiveEmbeddings, Loaded
from engine.rewards import RewardRules
from engine.types import Candidate, DecisionRequest, Item, RewardReport, Status
from engine.validation import Limits, check_decision_request, check_id, check_items, check_reward_report

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


@dataclass(frozen=True, slots=True)
class RegisteredPolicy:
    """Where a served model came from in a model registry: ``recbandit-policy`` version 3 @champion."""

    model_name: str
    version: str
    alias: str


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        config.bandit.validate()
        config.rewards.validate()
        self.config = config
        self._dir = Path(config.data_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self.log = SQLiteEventLog(self._dir / "events.db", config.rewards)
        self._catalog: dict[str, Item] = {item.item_id: _frozen_item(item) for item in self.log.items()}
        self._encoded = EncodedCandidates()
        self._event_prefix = uuid.uuid4().hex[:16]
        self._event_counter = itertools.count(1)
        self._recent: OrderedDict[str, _Example] = OrderedDict()
        self._recent_chars = 0  # text held by the remembered examples, counted as if not shared
        self._recent_lock = threading.Lock()
        self._learn_lock = threading.Lock()
        self._catalog_lock = threading.Lock()
        self.embeddings = LiveEmbeddings(self._dir, lambda: self._catalog.values(), self._catalog_lock)
        self.embeddings.load_if_present()
        self._load_model()
        self._wake = threading.Event()
        self._learned = threading.Condition()
        self._stopping = threading.Event()
        self.learn_pending()  # re-learn what the log holds beyond the checkpoint
        self._thread = threading.Thread(target=self._background, name="engine-background", daemon=True)
        self._thread.start()
        self.embeddings.watch(config.embeddings_poll_interval)

    def _load_model(self) -> None:
        checkpoint = read_checkpoint(self._dir)
        if checkpoint is None:
            self.bandit = VWBandit(self.config.bandit)
            self._model_id = "vw-" + uuid.uuid4().hex[:8]
            self._learned_seq = self._examples_learned = 0
            self._last_checkpoint: float | None = None
            self.registered_policy: RegisteredPolicy | None = None
            return
        saved = BanditConfig.from_dict(checkpoint.bandit)
        if saved != self.config.bandit:
            log.warning("the checkpoint's policy %s differs from the settings %s; the checkpoint's is kept",
                        saved, self.config.bandit)
        self.bandit = VWBandit(saved, model_path=str(self._dir / checkpoint.model_file))
        self._model_id = checkpoint.model_id
        self._learned_seq = checkpoint.learned_seq
        self._examples_learned = checkpoint.examples_learned
        self._last_checkpoint = checkpoint.ts
        self.registered_policy = RegisteredPolicy(**checkpoint.policy) if checkpoint.policy else None

    @property
    def model_version(self) -> str:
        return f"{self._model_id}@{self._examples_learned}"

    # -- Recommend -------------------------------------------------------------------------------

    def decide(self, request: DecisionRequest) -> LoggedDecision:
        """Choose items for ``request``, commit the decision to the log, and return it."""
        prepared = self._prepare_decision(request)
        if isinstance(prepared, LoggedDecision):
            return prepared
        return self._decided(prepared, self.log.append_decision(prepared.decision, prepared.record), request)

    async def decide_async(self, request: DecisionRequest) -> LoggedDecision:
        """:meth:`decide` for a coroutine: the event loop serves others while the decision commits."""
        prepared = self._prepare_decision(request)
        if isinstance(prepared, LoggedDecision):
            return prepared
        logged = await self.log.append_decision_async(prepared.decision, prepared.record)
        return self._decided(prepared, logged, request)

    def _prepare_decision(self, request: DecisionRequest) -> LoggedDecision | _Prepared:
        """Everything before the commit; an already logged event of ``request.event_id`` is returned as is."""
        if self._stopping.is_set():
            raise ModelNotReady("the engine is stopping")
        limits = self.config.limits
        check_decision_request(request, limits, self._encoded.known)
        if request.event_id:
            existing = self.log.get_decision(request.event_id)
            if existing is not None:
                return self._same_event(existing, request)
        live = self.embeddings.current  # one artifact for the whole decision, whatever swaps meanwhile
        user = live.embeddings.user_representation(request.user_id, request.user_features) if live else None
        candidates = self._candidates(request, live, user)
        num_results = request.num_results or 1
        if num_results > len(candidates):
            raise InvalidRequest(
                "num_results", f"must be at most the {len(candidates)} candidates left, got {num_results}"
            )
        ts = time.time()
        event_id = request.event_id or self._new_event_id()
        context = with_time_context(request.context, ts)
        shared = shared_line(request.user_features, context)
        encoded = [self._encoded.encode(c) for c in candidates]
        if live is not None:
            candidates, encoded = _with_affinity(live, user, candidates, encoded)
        actions = [line for line, _ in encoded]
        slots = self._fill_slots(event_id, shared, actions, candidates, num_results)
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
        )
        record = decision_to_json(decision, [record for _, record in encoded])
        return _Prepared(decision, record, shared, actions)

    def _decided(self, prepared: _Prepared, logged: LoggedDecision, request: DecisionRequest) -> LoggedDecision:
        if logged is prepared.decision:
            self._remember(logged, prepared.shared, prepared.actions)
        return self._same_event(logged, request)

    def _new_event_id(self) -> str:
        """32 hex digits: a random prefix drawn when the engine starts, then a counter.

        Unique like ``uuid4().hex`` without a system call per decision.
        """
        return f"{self._event_prefix}{next(self._event_counter):016x}"

    def _fill_slots(  # type: ignore[no-untyped-def]
        self, event_id, shared, actions, candidates, num_results
    ) -> tuple[SlotChoice, ...]:
        remaining = list(range(len(candidates)))
        slots = []
        bandit = self.bandit  # every slot from the same model, even if a new policy is swapped in meanwhile
        for slot in range(num_results):
            pmf = bandit.pmf(shared, [actions[i] for i in remaining])
            k = draw(pmf, uniform_draw(self.config.seed, event_id, slot))
            full = [0.0] * len(candidates)
            for j, i in enumerate(remaining):
                full[i] = pmf[j]
            chosen = remaining.pop(k)
            slots.append(SlotChoice(candidates[chosen].item_id, pmf[k], tuple(full)))
        return tuple(slots)

    @staticmethod
    def _same_event(existing: LoggedDecision, request: DecisionRequest) -> LoggedDecision:
        if existing.user_id != request.user_id:
            raise EventConflict(existing.event_id, "is already the event of another user_id")
        return existing

    def _candidates(self, request: DecisionRequest, live: Loaded | None = None, user: Representation | None = None) -> list[Candidate]:
        excluded = set(request.exclude_item_ids)
        catalog = self._catalog
        if request.candidates and not catalog and not excluded:
            return list(request.candidates)  # nothing to merge or leave out
        if request.candidates:
            candidates = []
            for c in request.candidates:
                item = catalog.get(c.item_id)
                if c.item_id in excluded or (item is not None and not item.active):
                    continue
                candidates.append(Candidate(c.item_id, merge_features(item.features if item else None, c.features)))
        elif live is not None and user is not None:
            candidates = self._retrieve(live, user, excluded)
        else:
            candidates = [Candidate(i.item_id, i.features) for i in catalog.values() if i.active]
            candidates = [c for c in candidates if c.item_id not in excluded]
            if not candidates:
                raise PreconditionFailed("candidates", "empty, and the catalog has no active item to offer")
            if len(candidates) > self.config.limits.max_candidates:
                raise PreconditionFailed(
                    "candidates",
                    f"empty, and the catalog's {len(candidates)} active items exceed max_candidates "
                    f"{self.config.limits.max_candidates}; send candidates",
                )
        if not candidates:
            raise InvalidRequest("exclude_item_ids", "leaves no candidate (excluded or inactive in the catalog)")
        return candidates

    def _retrieve(self, live: Loaded, user: Representation, excluded: set[str]) -> list[Candidate]:
        """The ``retrieval_top_n`` active catalog items with the best LightFM score for ``user``, minus ``excluded``."""
        if len(live.embeddings) == 0:
            raise PreconditionFailed("candidates", "empty, and the catalog has no active item to offer")
        catalog = self._catalog
        n = min(self.config.retrieval_top_n, self.config.limits.max_candidates)
        candidates = []
        for item_id, _ in live.embeddings.top_n(user, n, exclude=excluded):
            item = catalog.get(item_id)
            if item is not None and item.active:  # the index follows the catalog; this covers a write in progress
                candidates.append(Candidate(item_id, item.features))
        return candidates

    # -- Feedback and Activate ---------------------------------------------------------------------

    def record_reward(self, report: RewardReport) -> Status:
        return self._rewarded(self.log.append_reward(self._reward(report)))

    async def record_reward_async(self, report: RewardReport) -> Status:
        """:meth:`record_reward` for a coroutine."""
        return self._rewarded(await self.log.append_reward_async(self._reward(report)))

    def _reward(self, report: RewardReport) -> Reward:
        check_reward_report(report, self.config.limits)
        return Reward(report.event_id, report.item_id, report.label, report.reward, time.time())

    def _rewarded(self, status: Status) -> Status:
        if status is Status.NEW and not self._wake.is_set():  # a new reward may be final: learn it
            self._wake.set()
        return status

    def activate(self, event_id: str) -> Status:
        check_id("event_id", event_id, self.config.limits)
        return self.log.activate(event_id, time.time())

    # -- Catalog ---------------------------------------------------------------------------------

    def upsert_items(self, items: list[Item]) -> int:
        check_items("items", items, self.config.limits)
        with self._catalog_lock:
            count = self.log.upsert_items(items)
            self._catalog = {**self._catalog, **{item.item_id: _frozen_item(item) for item in items}}
            self.embeddings.upsert_items(items)  # new items get a representation from their features
        return count

    def delete_items(self, item_ids: list[str]) -> int:
        for i, item_id in enumerate(item_ids):
            check_id(f"item_ids[{i}]", item_id, self.config.limits)
        with self._catalog_lock:
            deleted = self.log.delete_items(item_ids)
            catalog = dict(self._catalog)
            for item_id in deleted:
                catalog.pop(item_id, None)
            self._catalog = catalog
            self.embeddings.delete_items(deleted)
        return len(deleted)

    def list_items(self, page_size: int, page_token: str, active_only: bool) -> tuple[list[Item], str]:
        if not 0 <= page_size <= 1000:
            raise InvalidRequest("page_size", f"must be within [0, 1000] (0 means 100), got {page_size}")
        after = _decode_token(page_token)
        size = page_size or 100
        items = self.log.items(after=after, limit=size + 1, active_only=active_only)
        if len(items) <= size:
            return items, ""
        return items[:size], _encode_token(items[size - 1].item_id)

    # -- learning, windows, checkpoints ------------------------------------------------------------

    def learn_pending(self) -> int:
        """Learn every final outcome in the log beyond what the model has; return how many."""
        learned = 0
        with self._learn_lock:
            while batch := self.log.final_outcomes_after(self._learned_seq):
                examples = self._examples([o.event_id for o in batch])
                for outcome in batch:
                    self._learn(outcome, examples[outcome.event_id])
                    self._learned_seq = outcome.seq
                    self._examples_learned += 1
                learned += len(batch)
        if learned:
            with self._learned:
                self._learned.notify_all()
        return learned

    def _remember(self, decision: LoggedDecision, shared: str, actions: list[str]) -> None:
        """Keep a new decision's VW lines, so that learning its reward needs no log read or encoding."""
        example = _Example.of(decision, shared, actions)
        with self._recent_lock:
            self._recent[decision.event_id] = example
            self._recent_chars += example.chars
            while len(self._recent) > RECENT_DECISIONS or self._recent_chars > RECENT_CHARS:
                self._recent_chars -= self._recent.popitem(last=False)[1].chars

    def _examples(self, event_ids: list[str]) -> dict[str, _Example]:
        """The decisions (as VW lines) of ``event_ids``: remembered ones, the rest read from the log."""
        found: dict[str, _Example] = {}
        with self._recent_lock:
            for event_id in event_ids:
                example = self._recent.get(event_id)
                if example is not None:
                    found[event_id] = example
        missing = [e for e in event_ids if e not in found]
        for event_id, decision in self.log.decisions(missing).items():
            shared = shared_line(decision.user_features, decision.context)
            found[event_id] = _Example.of(decision, shared, [action_line(c.item_id, c.features) for c in decision.candidates])
        return found

    def _learn(self, outcome: Outcome, example: _Example) -> None:
        earlier = set(example.chosen[: outcome.slot])
        remaining = [i for i, item_id in enumerate(example.item_ids) if item_id not in earlier]
        chosen = next(j for j, i in enumerate(remaining) if example.item_ids[i] == outcome.item_id)
        self.bandit.learn(
            example.shared,
            [example.actions[i] for i in remaining],
            chosen,
            outcome.reward,
            example.probabilities[outcome.slot],
        )
        if outcome.slot == len(example.chosen) - 1:
            with self._recent_lock:
                learned = self._recent.pop(outcome.event_id, None)
                if learned is not None:
                    self._recent_chars -= learned.chars

    def wait_until_learned(self, timeout: float = 10.0) -> bool:
        """Block until every outcome committed so far is learned (tests and the demo use this)."""
        target = self.log.last_outcome_seq()
        self._wake.set()
        with self._learned:
            return self._learned.wait_for(lambda: self._learned_seq >= target, timeout)

    def close_windows(self) -> int:
        finalised = self.log.close_windows(time.time())
        if finalised:
            self._wake.set()
        return finalised

    def checkpoint(self) -> Checkpoint:
        with self._learn_lock:
            checkpoint = Checkpoint(
                # The model id is in the name: after a policy swap the same learned_seq names another model,
                # and the manifest must never point at a file that was replaced under it.
                model_file=f"model-{self._model_id}-{self._learned_seq}.vw",
                model_id=self._model_id,
                learned_seq=self._learned_seq,
                examples_learned=self._examples_learned,
                ts=time.time(),
                bandit=asdict(self.bandit.config),
                policy=asdict(self.registered_policy) if self.registered_policy else None,
            )
            write_checkpoint(self._dir, self.bandit.save, checkpoint)
            self._last_checkpoint = checkpoint.ts
        return checkpoint

    def _background(self) -> None:
        next_checkpoint = time.monotonic() + self.config.checkpoint_interval
        next_close = time.monotonic()
        while not self._stopping.is_set():
            if self._wake.wait(self.config.maintenance_interval) and not self._stopping.is_set():
                time.sleep(LEARN_BATCH_DELAY)  # let the rewards of the next few ms join this batch
            self._wake.clear()
            try:
                if time.monotonic() >= next_close:  # on a timer, not on every reward's wake-up
                    self.close_windows()
                    next_close = time.monotonic() + self.config.maintenance_interval
                self.learn_pending()
                if time.monotonic() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.monotonic() + self.config.checkpoint_interval
            except Exception:  # keep serving; the log still holds everything to learn later
                log.exception("background learning failed; retrying")
                time.sleep(1.0)

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            model_version=self.model_version,
            examples_learned=self._examples_learned,
            examples_pending=max(0, self.log.last_outcome_seq() - self._learned_seq),
            bandit=self.bandit.config,
            vw_arguments=self.bandit.arguments,
            last_checkpoint_ts=self._last_checkpoint,
            rewards=self.config.rewards,
            embeddings=live.info() if (live := self.embeddings.current) else None,
            registered_policy=self.registered_policy,
        )

    # -- hot swaps ---------------------------------------------------------------------------------

    def reload_embeddings(self) -> bool:
        """Swap in the newest embeddings artifact now, if it is not the one in use (see :mod:`engine.retrieval`)."""
        return self.embeddings.reload()

    def swap_policy(self, bandit: BanditConfig, model_path: str, policy: RegisteredPolicy) -> None:
        """Serve the registered policy's VW model from now on, and keep learning online on it.

        The model is loaded completely first; then, under the learn lock, it replaces the live one.
        A decision in flight finishes on the model it started with (it holds its own reference;
        the old workspace is freed when the last one lets go), and no batch of learning straddles
        the two models.

        The learned watermark carries over unchanged: the outcomes up to ``learned_seq`` are the
        old model's past (the registered policy learned its own from the log it was evaluated on),
        and the new model learns every final outcome after ``learned_seq`` from the next batch on,
        exactly once. ``examples_learned`` restarts at 0, so ``model_version`` reads
        ``recbandit-policy-v3@N``: the registered version plus N online updates. A checkpoint is
        written at once, so a restart resumes the registered policy (and knows its version).
        """
        loaded = VWBandit(bandit, model_path=model_path)
        with self._learn_lock:
            self.bandit = loaded
            self._model_id = f"{policy.model_name}-v{policy.version}"
            self._examples_learned = 0
            self.registered_policy = policy
        log.info("serving %s version %s (@%s) from %s", policy.model_name, policy.version, policy.alias, model_path)
        self.checkpoint()

    def close(self) -> None:
        """Stop deciding, learn what is final, checkpoint, and close the log."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self.embeddings.close()
        self.learn_pending()
        self.checkpoint()
        self.log.close()


def _encode_token(item_id: str) -> str:
    return base64.urlsafe_b64encode(item_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("page_token", "is not a next_page_token from ListItems") from None


LEARN_BATCH_DELAY = 0.005
"""Seconds the learner waits after a reward wakes it, so that it learns rewards in batches."""

RECENT_DECISIONS = 65_536
RECENT_CHARS = 96 << 20
"""How many recent decisions keep their VW lines in memory for learning, and at most how much text
(older ones are read back from the log). Lines of catalog and repeated candidates are shared, so
the text limit binds only when candidates' features differ from request to request."""


@dataclass(frozen=True, slots=True)
class _Prepared:
    """A decision ready to commit, with its record and the VW lines it was decided from."""

    decision: LoggedDecision
    record: str
    shared: str
    actions: list[str]


@dataclass(frozen=True, slots=True)
class _Example:
    """What learning one decision's slots needs: its VW lines, candidate ids, choices and probabilities."""

    shared: str
    actions: tuple[str, ...]
    item_ids: tuple[str, ...]
    chosen: tuple[str, ...]
    probabilities: tuple[float, ...]
    chars: int  # the text kept in memory, which the cache of recent examples is bounded by

    @classmethod
    def of(cls, decision: LoggedDecision, shared: str, actions: list[str]) -> _Example:
        return cls(
            shared,
            tuple(actions),
            tuple(c.item_id for c in decision.candidates),
            decision.chosen_item_ids,
            tuple(s.probability for s in decision.slots),
            len(shared) + sum(map(len, actions)),
        )


def _frozen_item(item: Item) -> Item:
    return Item(item.item_id, frozen_features(item.features), item.active)


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
            candidate = Candidate(candidate.item_id, {**candidate.features, **features})
            line = action_line(candidate.item_id, candidate.features) if own else f"{line} {affinity_segment(features)}"
            record = candidate_to_json(candidate)
        out_candidates.append(candidate)
        out_encoded.append((line, record))
    return out_candidates, out_encoded
