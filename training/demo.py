"""``recbandit demo``: a real server on embedded defaults, a simulated storefront driving it.

Starts a server on 127.0.0.1 (a free port) with a fresh data directory, publishes the simulated
catalog through the Catalog RPCs, and serves the simulated stream through gRPC — sessions,
multi-slot pages with position effects, delayed and lost feedback, deferred email pages, new
items arriving halfway (:mod:`training.storefront_client`). It prints, per block of events, the
expected clicks and purchases per 1,000 pages of the learned policy beside uniform random and the
oracle, the exploration rate, and where the event log and the learning-curve plot are.

The storefront runs a campaign: a tenth of its users, chosen by a stable hash, are the control arm
(``--control-share 0.1``), served the storefront's own order; everyone else gets the bandit. And
its merchandisers keep one business rule (``--rules``): no item tagged ``premium`` in emails. The
learning table is the bandit's arm alone; at the end the demo shows how often a premium item held
a slot of an email page and of the others (the rule at work), and the campaign table of
``recbandit campaign-report``: per arm and channel, CTR, conversion and revenue per 1,000
impressions, and the bandit's uplift over control with its 95% interval.

Halfway through — when the new items arrive — it trains LightFM embeddings on the log so far
(``recbandit train-embeddings``, tracked in MLflow) and loads them with the Admin RPC
``ReloadEmbeddings``: from then on every candidate carries the user's LightFM affinity, and the
new items get theirs from their catalog features alone.

It ends as a data scientist's day would: ``recbandit evaluate`` on the log it just wrote — candidate
policies replayed and estimated off-policy with intervals, tracked in MLflow in the data
directory, the best registered as ``recbandit-policy`` and promoted to champion when it beats the
current one — so ``make mlflow-ui`` has runs to compare.

The server and its client are handed in (``serve``, ``connect``) by the ``recbandit`` command, the
one place that wires ``server/`` and ``training/`` together: training does not import the server.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from engine.campaign import RECBANDIT, CampaignReport, CampaignTally
from engine.core import Engine
from engine.logreader import LogReader
from engine.types import Features
from training.simulator import Storefront, WorldConfig
from training.storefront_client import SIMULATED_DEADLINE, Page, Recbandit, StorefrontClient

BLOCK = 1000
CONTROL_SHARE = 0.1
"""The share of users in the control arm, served the storefront's order (``--control-share``)."""
CAMPAIGN = "demo"
RULED_TAG, RULED_CHANNEL = "premium", "email"
RULE = f"no-{RULED_TAG}-by-{RULED_CHANNEL}"
RULES = f"""# the demo's business rules (recbandit serve --rules)
[[eligibility]]
name = "{RULE}"
items = {{ tags = "{RULED_TAG}" }}
context = {{ channel = "{RULED_CHANNEL}" }}
"""


class DemoServer(Protocol):
    """A started server, as the demo uses it (:class:`server.app.RunningServer`)."""

    @property
    def port(self) -> int: ...

    @property
    def engine(self) -> Engine: ...

    def stop(self, grace: float) -> None: ...


class Serve(Protocol):
    """Start a server with these settings (by their names in :class:`server.settings.Settings`)."""

    def __call__(self, **settings: Any) -> DemoServer: ...


class DemoClient(Recbandit, Protocol):
    """The client the demo drives the server with (:class:`server.client.RecbanditClient`)."""

    def reload_embeddings(self) -> Any: ...

    def __enter__(self) -> DemoClient: ...

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class Connect(Protocol):
    """A client of the server at ``target`` whose calls, retries included, take at most ``deadline`` seconds."""

    def __call__(self, target: str, *, deadline: float) -> DemoClient: ...


@dataclass(frozen=True, slots=True)
class Block:
    """Per-page averages over a block of events (the pages kept of them); *expected* values come
    from the ground truth."""

    start: int
    events: int
    pages: int  # the pages of the block averaged (all, or those kept)
    learned: float  # expected clicks per page of the pages served
    random: float
    oracle: float
    learned_purchases: float
    random_purchases: float
    oracle_purchases: float
    clicks: int  # what the users did on the pages served
    reported_clicks: int
    revenue: float

    @property
    def ratio(self) -> float:
        return self.learned / self.oracle


def summarise(pages: list[Page], block: int = BLOCK, keep: Callable[[Page], bool] | None = None) -> list[Block]:
    """Average the pages' expected rewards per block of ``block`` events, and count what happened;
    with ``keep``, over the pages it keeps alone."""
    blocks = []
    for first in range(0, len(pages), block):
        events = pages[first : first + block]
        part = events if keep is None else [p for p in events if keep(p)]
        n = len(part) or 1
        blocks.append(
            Block(
                start=first,
                events=len(events),
                pages=len(part),
                learned=sum(p.expected_clicks for p in part) / n,
                random=sum(p.random_clicks for p in part) / n,
                oracle=sum(p.oracle_clicks for p in part) / n,
                learned_purchases=sum(p.expected_purchases for p in part) / n,
                random_purchases=sum(p.random_purchases for p in part) / n,
                oracle_purchases=sum(p.oracle_purchases for p in part) / n,
                clicks=sum(p.clicks for p in part),
                reported_clicks=sum(p.reported_clicks for p in part),
                revenue=sum(p.revenue for p in part),
            )
        )
    return blocks


def format_table(blocks: list[Block]) -> str:
    lines = [
        "| events        | clicks/1k learned | random | oracle | learned/oracle | purchases/1k learned | random | oracle | revenue |",
        "|---------------|------------------:|-------:|-------:|---------------:|---------------------:|-------:|-------:|--------:|",
    ]
    for b in blocks:
        span = f"{b.start + 1}-{b.start + b.events}"
        lines.append(
            f"| {span:<13} | {b.learned * 1000:17.0f} | {b.random * 1000:6.0f} | {b.oracle * 1000:6.0f} "
            f"| {b.ratio:14.1%} | {b.learned_purchases * 1000:20.1f} | {b.random_purchases * 1000:6.1f} "
            f"| {b.oracle_purchases * 1000:6.1f} | {b.revenue:7.0f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class LogSummary:
    """What the demo reads back from its event log."""

    arms: dict[str, str]  # event id → campaign arm
    exploration_rate: float  # the bandit arm's mean of 1 − max(pmf) in slot 0: the chance a decision explored
    ruled_share: dict[bool, float]  # on the rule's channel or not: the share of slots that held a ruled item
    campaign: CampaignReport
    with_portrait: float  # the share of decisions that saw the user's portrait (engine.portraits)
    portrait: tuple[str, Features]  # the most frequent user's portrait, as their last decision saw it


def read_log(reader: LogReader, closed_by: float) -> LogSummary:
    """One pass over the log: each decision's arm, the exploration rate, the share of slots that held
    an item the rule rules out, on its channel and elsewhere, and the campaign report
    (:mod:`engine.campaign`) of the decisions closed by ``closed_by``."""
    arms: dict[str, str] = {}
    explored: list[float] = []
    ruled: dict[bool, list[bool]] = {True: [], False: []}
    campaign = CampaignTally(closed_by)
    visits: Counter[str] = Counter()
    portraits: dict[str, Features] = {}
    with_portrait = 0
    for event in reader.joined():
        decision = event.decision
        arms[decision.event_id] = decision.arm
        visits[decision.user_id] += 1
        portraits[decision.user_id] = decision.portrait
        with_portrait += bool(decision.portrait)
        campaign.add(event)
        tags = {c.item_id: c.features.get("tags") or () for c in decision.candidates}
        ruled[decision.context.get("channel") == RULED_CHANNEL] += [
            RULED_TAG in tags[slot.item_id] for slot in decision.slots]  # type: ignore[operator]
        if decision.arm == RECBANDIT:
            explored.append(1.0 - max(decision.slots[0].pmf))
    regular = visits.most_common(1)[0][0] if visits else ""
    return LogSummary(arms, sum(explored) / max(len(explored), 1),
                      {channel: sum(slots) / max(len(slots), 1) for channel, slots in ruled.items()}, campaign.report(),
                      with_portrait / max(len(arms), 1), (regular, portraits.get(regular, {})))


def format_log_summary(summary: LogSummary) -> str:
    """The rule at work, and the campaign table overall and per channel, with the uplifts."""
    from training.campaign import format_campaign

    by_channel = dataclasses.replace(summary.campaign,
                                     segments=tuple(s for s in summary.campaign.segments if s.surface == "*"))
    user, portrait = summary.portrait
    return "\n".join([
        f"portraits: {summary.with_portrait:.1%} of decisions saw the user's portrait (namespace Portrait); "
        f"{user}'s, at their last visit: " + (" ".join(f"{name}={_shown(value)}" for name, value in portrait.items()) or "none"),
        "",
        f'rule "{RULE}" (eligibility: no item tagged {RULED_TAG} on the {RULED_CHANNEL} channel): '
        f"{RULED_TAG} items held {summary.ruled_share[True]:.1%} of the slots of {RULED_CHANNEL} pages, "
        f"{summary.ruled_share[False]:.1%} of the others'",
        "",
        f'campaign "{CAMPAIGN}": {CONTROL_SHARE:.0%} of users in the control arm (recbandit campaign-report; '
        "per surface too there)",
        format_campaign(by_channel),
    ])


def _shown(value: object) -> str:
    return ",".join(value) if isinstance(value, tuple | list) else str(value)


def plot_learning_curve(blocks: list[Block], path: Path) -> None:
    from training.plots import pyplot

    plt = pyplot()

    x = [b.start + b.events for b in blocks]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [b.oracle * 1000 for b in blocks], label="oracle", linestyle="--")
    ax.plot(x, [b.learned * 1000 for b in blocks], label="recbandit", marker="o")
    ax.plot(x, [b.random * 1000 for b in blocks], label="uniform random", linestyle=":")
    ax.set_xlabel("events")
    ax.set_ylabel(f"expected clicks per 1,000 pages (blocks of {blocks[0].events})")
    ax.set_title("recbandit demo: learning while serving")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


REWARD_WINDOW_SECONDS = 5
"""The demo's reward window: the simulated storefront reports at once, so a short one suffices."""


def demo_world(events: int, seed: int, drift: bool = False) -> WorldConfig:
    """The demo's storefront: 200 items, 20 more arriving halfway, optionally a taste drift at 60%."""
    return WorldConfig(seed=seed, new_items_at=events // 2, new_items=20, drift_at=int(events * 0.6) if drift else None)


def run_demo(
    events: int = 20_000,
    data_dir: Path | None = None,
    seed: int = 7,
    concurrency: int = 4,
    quiet: bool = False,
    drift: bool = False,
    block: int = BLOCK,
    evaluate: bool = True,
    embeddings: bool = True,
    *,
    serve: Serve,
    connect: Connect,
) -> list[Block]:
    """Play ``events`` simulated visits through a server that ``serve`` starts and ``connect`` talks to."""
    began = time.perf_counter()
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="recbandit-demo-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "rules.toml").write_text(RULES)
    running = serve(host="127.0.0.1", port=0, data_dir=str(data_dir), reward_window=f"{REWARD_WINDOW_SECONDS}s",
                    seed=seed, rules=str(data_dir / "rules.toml"), control_share=CONTROL_SHARE, campaign=CAMPAIGN)
    try:
        with connect(f"127.0.0.1:{running.port}", deadline=SIMULATED_DEADLINE) as recbandit:
            client = StorefrontClient(recbandit, Storefront(demo_world(events, seed, drift)))
            halfway = events // 2 if embeddings else events
            pages = _play(client, 0, halfway, concurrency, quiet)
            if halfway < events:
                running.engine.wait_until_learned()
                _train_embeddings(data_dir, seed, quiet)
                reloaded = recbandit.reload_embeddings()
                if not quiet:
                    print(f"serving embeddings {reloaded.artifact}")
                pages += _play(client, halfway, events - halfway, concurrency, quiet)
        time.sleep(REWARD_WINDOW_SECONDS)  # every reward is in: the last windows close, so the log is final
        running.engine.close_windows()
        running.engine.wait_until_learned()
        summary = read_log(running.engine.log.reader, closed_by=time.time())
        blocks = summarise(pages, block, keep=lambda page: summary.arms[page.event_id] == RECBANDIT)
        info = running.engine.model_info()
    finally:
        running.stop(grace=2.0)
    plot_learning_curve(blocks, data_dir / "learning_curve.png")
    if not quiet:
        print(f"recbandit's pages ({1 - CONTROL_SHARE:.0%} of users; the control arm's are in the campaign table below)")
        print(format_table(blocks))
        print(f"\nexploration rate {summary.exploration_rate:.1%} · model {info.model_version} · "
              f"{info.bandit.exploration}")
        print(f"event log   {data_dir / 'events.db'}  (recbandit export-log --data-dir {data_dir} --out events.jsonl)")
        print(f"plot        {data_dir / 'learning_curve.png'}")
    if evaluate:
        _evaluate(data_dir, quiet)
    if not quiet:
        print(f"\n{format_log_summary(summary)}")
        print(f"demo took {time.perf_counter() - began:.0f} s")
    return blocks


def _evaluate(data_dir: Path, quiet: bool) -> None:
    """Replay candidate policies on the demo's log, track them in MLflow, register and maybe promote."""
    from training.evaluate import EvaluationConfig, format_table
    from training.registry import evaluate_and_register
    from training.tracking import default_tracking_uri

    if not quiet:
        print("\nevaluating candidate policies on this log (recbandit evaluate) …")
    config = EvaluationConfig(n_resamples=300, compare_python_replay=False)
    evaluation, version, promotion = evaluate_and_register(data_dir, config, default_tracking_uri(data_dir))
    if not quiet:
        print(format_table(evaluation))
        print(f"best by the DR lower bound: {evaluation.best.name} · recbandit-policy version {version}, "
              f"{'champion' if promotion.promoted else 'not promoted'}: {promotion.reason}")
        print(f"MLflow      make mlflow-ui DATA={data_dir}")


def _play(client: StorefrontClient, start: int, count: int, concurrency: int, quiet: bool) -> list[Page]:
    from tqdm import tqdm

    with tqdm(total=count, unit="event", disable=quiet, desc="storefront") as bar:
        return client.play(count, start=start, concurrency=concurrency, on_page=lambda _: bar.update())


def _train_embeddings(data_dir: Path, seed: int, quiet: bool) -> None:
    """``recbandit train-embeddings`` on the log so far, tracked in the data directory's MLflow store."""
    from training.embeddings import EmbeddingConfig, format_metrics, train_from_log
    from training.tracking import default_tracking_uri

    config = EmbeddingConfig(seed=seed)
    if not quiet:
        print("\ntraining LightFM embeddings on the log so far (recbandit train-embeddings) …")
    result = train_from_log(data_dir, config, tracking_uri=default_tracking_uri(data_dir), progress=not quiet)
    if not quiet:
        print(format_metrics(result.metrics, config.k))
