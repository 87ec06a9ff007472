"""Policies behind one interface, for fast in-process comparisons on the simulated storefront.

A policy sees a batch of :class:`~training.simulator.Visit` s, returns a :class:`Choice` for each
(the candidate it shows, the probability it showed it with, and its whole pmf), and later learns
the rewards of those choices — a batch models feedback that arrives after the next visits have
been served; :meth:`close` lets go of what the policy holds. Offline comparisons use one slot per
visit; :class:`EnginePolicy` also fills pages of several slots (``choose_pages``), and the
multi-slot path is exercised through the real server too (:mod:`training.storefront_client`).

- :class:`EnginePolicy` is the server's decision path itself: an in-process
  :class:`~engine.core.Engine` deciding, logging, and learning the rewards it is told.
- :class:`BanditPolicy` is a copy of that path, five times faster: the same VW adapter, the same
  feature lines and the same seeded draw, without the log. The two give the same pmfs and choices
  for the same seed (``tests/test_conformance.py`` asserts it), so the benchmark plays the
  server's default through the Engine and the other algorithms through the copy.
- :class:`LinearPolicy` wraps MABWiser's LinUCB or LinTS (one linear model per item, the user and
  context features one-hot encoded): the usual contextual-bandit peers.
- :class:`PopularityPolicy` shows the candidate with the best click-through so far, for everyone.
- :class:`RandomPolicy` and :class:`OraclePolicy` bound the others from below and above.

Greedy policies (popularity, LinUCB, LinTS, oracle) return a one-hot pmf: given their state and
seed the choice is deterministic, which is also why their logs cannot be evaluated off-policy.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from engine.bandit import BanditConfig, VWBandit, action_line, affinity_segment, shared_line
from engine.core import Engine, EngineConfig
from engine.embeddings import Embeddings
from engine.features import frozen_features, with_time_context
from engine.exploration import draw, uniform_draw
from engine.portraits import NO_PORTRAIT, Portrait, portrait_features, rewarded, visited
from engine.records import LoggedDecision
from engine.types import Candidate, DecisionRequest, Features, RewardReport
from training.simulator import AGE_BANDS, CHANNELS, REGIONS, SEGMENTS, SURFACES, TAGS, WEEKDAYS, Storefront, Visit


@dataclass(frozen=True, slots=True)
class Choice:
    index: int  # into visit.candidates
    probability: float
    pmf: tuple[float, ...]


class Policy(Protocol):
    name: str

    def choose(self, visits: Sequence[Visit]) -> list[Choice]: ...

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None: ...

    def close(self) -> None: ...


def _greedy_choice(scores: Sequence[float] | np.ndarray) -> Choice:
    """The best-scoring candidate (the first on ties), with a one-hot pmf."""
    index = int(np.argmax(scores))
    pmf = [0.0] * len(scores)
    pmf[index] = 1.0
    return Choice(index, 1.0, tuple(pmf))


def _uniform_choice(visit: Visit, seed: int) -> Choice:
    n = len(visit.candidates)
    pmf = (1.0 / n,) * n
    index = draw(list(pmf), uniform_draw(seed, str(visit.index), 0))
    return Choice(index, pmf[index], pmf)


class BanditPolicy:
    """recbandit's VW ``cb_explore_adf`` bandit, fed exactly what the server would feed it.

    With ``embeddings`` every candidate line also carries the LightFM affinity features of the
    visit's user and the item (namespace ``Affinity``), as the server adds them. With ``portraits``
    the shared line carries the user's portrait (namespace ``Portrait``), kept with
    :mod:`engine.portraits` as the engine keeps it: a visit as it is decided, a click (label
    ``click``) and a purchase (label ``purchase``, worth what was spent) as their rewards are learned.
    With ``model_path`` it starts from a model :meth:`save` wrote (its VW arguments win over ``config``).
    """

    def __init__(self, world: Storefront, config: BanditConfig = BanditConfig(), seed: int = 0, name: str = "",
                 embeddings: Embeddings | None = None, portraits: bool = False, model_path: str | None = None) -> None:
        self.name = name or (f"recbandit {config.exploration}" + (" + embeddings" if embeddings is not None else "")
                             + (" + portraits" if portraits else ""))
        self._portraits: dict[str, Portrait] | None = {} if portraits else None
        self.world = world
        self.seed = seed
        self.embeddings = embeddings
        self._bandit = VWBandit(config, model_path)
        self._lines: dict[str, str] = {}
        self._shown: dict[int, tuple[str, list[str]]] = {}  # visit index → the example chosen from

    def _example(self, visit: Visit) -> tuple[str, list[str]]:
        lines = self._lines
        for item_id in visit.candidates:
            if item_id not in lines:
                lines[item_id] = action_line(item_id, self.world.items[self.world.item_index[item_id]].features)
        actions = [lines[i] for i in visit.candidates]
        if self.embeddings is not None:
            user = self.embeddings.user_representation(visit.user_id, visit.user_features)
            items = self.world.items
            features = {i: items[self.world.item_index[i]].features for i in visit.candidates}
            affinity = self.embeddings.affinity_features(user, visit.candidates, features)
            actions = [f"{line} {affinity_segment(a)}" if a else line for line, a in zip(actions, affinity, strict=True)]
        context = with_time_context(visit.context, 0.0)  # the visit has its hour and weekday: the coarse forms
        return shared_line(visit.user_features, context, self._visited(visit)), actions

    def _visited(self, visit: Visit) -> Features:
        """The portrait features ``visit`` is decided with; the visit joins the user's portrait."""
        if self._portraits is None:
            return {}
        portrait = self._portraits.get(visit.user_id, NO_PORTRAIT)
        self._portraits[visit.user_id] = Portrait(visited(portrait.visits, visit.ts, visit.context), portrait.history)
        return portrait_features(portrait, visit.ts, visit.context)

    def _rewarded(self, visit: Visit, item_id: str, reward: float) -> None:
        """The click, and what it spent, join the user's portrait."""
        if self._portraits is None:
            return
        features = self.world.items[self.world.item_index[item_id]].features
        portrait = self._portraits.get(visit.user_id, NO_PORTRAIT)
        history = rewarded(portrait.history, visit.ts, "click", reward, features)
        history = rewarded(history, visit.ts, "purchase", self.world.spent(visit), features)
        self._portraits[visit.user_id] = Portrait(portrait.visits, history)

    def choose(self, visits: Sequence[Visit]) -> list[Choice]:
        choices = []
        for visit in visits:
            example = self._shown[visit.index] = self._example(visit)
            pmf = self._bandit.pmf(*example)
            index = draw(pmf, uniform_draw(self.seed, str(visit.index), 0))
            choices.append(Choice(index, pmf[index], tuple(pmf)))
        return choices

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None:
        for visit, choice, reward in zip(visits, choices, rewards, strict=True):
            shared, actions = self._shown.pop(visit.index, None) or self._example(visit)
            self._bandit.learn(shared, actions, choice.index, reward, choice.probability)
            self._rewarded(visit, visit.candidates[choice.index], reward)

    def save(self, path: str) -> None:
        """Write the VW model; ``BanditPolicy(..., model_path=path)`` serves the same pmfs."""
        self._bandit.save(path)

    def close(self) -> None:
        self._bandit.close()


class EnginePolicy:
    """The server's decision path itself: an in-process :class:`~engine.core.Engine` on SQLite.

    Each visit is one ``Engine.decide_async``, as a server's Recommend is (event id
    ``str(visit.index)``, the visit's user, context and candidates with their catalog features), so
    the rules, the portraits, the seeded draw and the event log are the engine's own; its
    probabilities are the logged ones. ``learn`` reports each reward with
    ``Engine.record_reward_async`` and waits until the engine has learned them: a batch of feedback
    is learned before the next batch is decided, as :class:`BanditPolicy` learns it. With the same
    seed the two give the same pmfs and choices.

    ``data_dir`` keeps the engine's directory (a temporary one otherwise, removed by
    :meth:`close`); a new policy on the same directory continues from its checkpoint and log.
    ``rules_file`` is the server's ``--rules``. ``portraits`` is off by default: the engine reads
    the wall clock, not the simulated one, so a portrait's ``since_last_visit`` and session are not
    the world's (with portraits on, the two policies part at the first visit where they differ).
    """

    def __init__(self, world: Storefront, config: BanditConfig = BanditConfig(), seed: int = 0, name: str = "",
                 data_dir: Path | None = None, rules_file: Path | None = None, portraits: bool = False) -> None:
        self.name = name or f"recbandit {config.exploration} (engine)"
        self.world = world
        self.seed = seed
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="recbandit-engine-")
            data_dir = Path(self._temporary.name) / "data"
        self.data_dir = Path(data_dir)
        self.engine = Engine(EngineConfig(data_dir=self.data_dir, bandit=config, seed=seed, rules_file=rules_file,
                                          portraits=portraits, embeddings_poll_interval=0.0,
                                          checkpoint_interval=3600.0))
        self._candidates: dict[str, Candidate] = {}  # one frozen view per item: the engine encodes it once
        self._loop = asyncio.new_event_loop()

    def _candidate(self, item_id: str) -> Candidate:
        candidate = self._candidates.get(item_id)
        if candidate is None:
            features = frozen_features(self.world.items[self.world.item_index[item_id]].features)
            candidate = self._candidates[item_id] = Candidate(item_id, features)
        return candidate

    def _request(self, visit: Visit, num_results: int) -> DecisionRequest:
        return DecisionRequest(user_id=visit.user_id, user_features=visit.user_features, context=visit.context,
                               candidates=tuple(self._candidate(i) for i in visit.candidates),
                               num_results=num_results, event_id=str(visit.index))

    def decide(self, visits: Sequence[Visit], num_results: Sequence[int]) -> list[LoggedDecision]:
        """The engine's logged decision for each visit, in flight together as a server's Recommends
        are (``Engine.decide_async``: one commit for many), except that a user's visits are decided
        one after the other, so that each sees the ones before in the user's portrait and caps."""
        async def after(before: asyncio.Future[LoggedDecision] | None, request: DecisionRequest) -> LoggedDecision:
            if before is not None:
                await before
            return await self.engine.decide_async(request)

        async def decide_all() -> list[LoggedDecision]:
            last: dict[str, asyncio.Future[LoggedDecision]] = {}
            for visit, n in zip(visits, num_results, strict=True):
                last[visit.user_id] = asyncio.ensure_future(after(last.get(visit.user_id), self._request(visit, n)))
                pending.append(last[visit.user_id])
            return await asyncio.gather(*pending)

        pending: list[asyncio.Future[LoggedDecision]] = []
        return self._loop.run_until_complete(decide_all())

    def choose_pages(self, visits: Sequence[Visit]) -> list[tuple[Choice, ...]]:
        """``visit.slots`` choices per visit, slot by slot; a slot's pmf is over the candidates left."""
        return [_choices(v, d) for v, d in zip(visits, self.decide(visits, [v.slots for v in visits]), strict=True)]

    def choose(self, visits: Sequence[Visit]) -> list[Choice]:
        return [_choices(v, d)[0] for v, d in zip(visits, self.decide(visits, [1] * len(visits)), strict=True)]

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None:
        """Feedback for each choice (label ``click``), committed in order, then the purchases a world
        with history made (label ``purchase``, worth what was spent: logged and in the portrait, not
        learned, the click being the slot's first reward); the engine learns the clicks."""
        reports = [RewardReport(str(visit.index), reward, visit.candidates[choice.index], "click")
                   for visit, choice, reward in zip(visits, choices, rewards, strict=True)]
        reports += [RewardReport(str(visit.index), spent, visit.candidates[choice.index], "purchase")
                    for visit, choice in zip(visits, choices, strict=True) if (spent := self.world.spent(visit)) > 0]

        async def report_all() -> None:
            await asyncio.gather(*(self.engine.record_reward_async(report) for report in reports))

        self._loop.run_until_complete(report_all())
        if not self.engine.wait_until_learned(timeout=60.0):
            raise RuntimeError(f"{self.name}: the engine did not learn a batch of feedback within a minute")

    def checkpoint(self) -> None:
        self.engine.checkpoint()

    def close(self) -> None:
        """Close the engine (it learns what is final and checkpoints); a temporary directory goes too."""
        self.engine.close()
        self._loop.close()
        if self._temporary is not None:
            self._temporary.cleanup()


def _choices(visit: Visit, decision: LoggedDecision) -> tuple[Choice, ...]:
    """The decision's slots as choices over ``visit.candidates`` (candidates the rules removed: 0)."""
    position = {item_id: k for k, item_id in enumerate(visit.candidates)}
    offered = [position[c.item_id] for c in decision.candidates]
    choices = []
    for slot in decision.slots:
        pmf = [0.0] * len(visit.candidates)
        for k, p in zip(offered, slot.pmf, strict=True):
            pmf[k] = p
        choices.append(Choice(position[slot.item_id], slot.probability, tuple(pmf)))
    return tuple(choices)


class RandomPolicy:
    name = "uniform random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def choose(self, visits: Sequence[Visit]) -> list[Choice]:
        return [_uniform_choice(visit, self.seed) for visit in visits]

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None:
        pass

    def close(self) -> None:
        pass


class OraclePolicy:
    name = "oracle"

    def __init__(self, world: Storefront) -> None:
        self.world = world

    def choose(self, visits: Sequence[Visit]) -> list[Choice]:
        return [_greedy_choice(self.world.click_probabilities(visit)) for visit in visits]

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None:
        pass

    def close(self) -> None:
        pass


class PopularityPolicy:
    """The best click-through so far, the same for everyone: ``(clicks + 1) / (shows + 2)``.

    The prior makes unseen items look promising, which is all the exploration it does.
    """

    name = "popularity"

    def __init__(self) -> None:
        self._shows: defaultdict[str, int] = defaultdict(int)
        self._clicks: defaultdict[str, float] = defaultdict(float)

    def choose(self, visits: Sequence[Visit]) -> list[Choice]:
        return [
            _greedy_choice([(self._clicks[i] + 1.0) / (self._shows[i] + 2.0) for i in visit.candidates])
            for visit in visits
        ]

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None:
        for visit, choice, reward in zip(visits, choices, rewards, strict=True):
            item_id = visit.candidates[choice.index]
            self._shows[item_id] += 1
            self._clicks[item_id] += reward

    def close(self) -> None:
        pass


_ONE_HOT_VOCABULARY = (
    [("segment", v) for v in SEGMENTS]
    + [("region", v) for v in REGIONS]
    + [("age_band", v) for v in AGE_BANDS]
    + [("interests", v) for v in TAGS]
    + [("channel", v) for v in CHANNELS]
    + [("surface", v) for v in SURFACES]
    + [("hour", str(h)) for h in range(24)]
    + [("weekday", v) for v in WEEKDAYS]
)
_ONE_HOT_POSITION = {key: k for k, key in enumerate(_ONE_HOT_VOCABULARY)}


def one_hot_context(visit: Visit) -> np.ndarray:
    """The visit's user features and context as one 0/1 vector (lists set one entry per value)."""
    vector = np.zeros(len(_ONE_HOT_VOCABULARY))
    for features in (visit.user_features, visit.context):
        for name, value in features.items():
            for v in value if isinstance(value, tuple) else (value,):
                vector[_ONE_HOT_POSITION[(name, str(v))]] = 1.0
    return vector


class LinearPolicy:
    """MABWiser's LinUCB or LinTS: one ridge regression per item over the one-hot context.

    The first visit shows a uniformly drawn candidate (MABWiser needs one fit before it can
    predict); items that arrive later are added as new arms.
    """

    def __init__(self, world: Storefront, learning_policy: str = "LinUCB", alpha: float = 1.0, seed: int = 0) -> None:
        from mabwiser.mab import MAB, LearningPolicy

        self.name = f"MABWiser {learning_policy}"
        self.seed = seed
        policy = getattr(LearningPolicy, learning_policy)(alpha=alpha)
        arms = [item.item_id for item in world.initial_items()]
        self._mab = MAB(arms=arms, learning_policy=policy, seed=seed)
        self._arms = set(arms)
        self._fitted = False

    def choose(self, visits: Sequence[Visit]) -> list[Choice]:
        for visit in visits:
            for item_id in visit.candidates:
                if item_id not in self._arms:
                    self._mab.add_arm(item_id)
                    self._arms.add(item_id)
        if not self._fitted:
            return [_uniform_choice(visit, self.seed) for visit in visits]
        expectations = self._mab.predict_expectations(np.stack([one_hot_context(v) for v in visits]))
        if isinstance(expectations, dict):  # MABWiser returns a dict, not a list, for one visit
            expectations = [expectations]
        return [
            _greedy_choice([scores[i] for i in visit.candidates])
            for visit, scores in zip(visits, expectations, strict=True)
        ]

    def learn(self, visits: Sequence[Visit], choices: Sequence[Choice], rewards: Sequence[float]) -> None:
        fit = self._mab.partial_fit if self._fitted else self._mab.fit
        decisions = [visit.candidates[choice.index] for visit, choice in zip(visits, choices, strict=True)]
        fit(decisions, list(rewards), np.stack([one_hot_context(v) for v in visits]))
        self._fitted = True

    def close(self) -> None:
        pass
