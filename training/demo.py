"""``recbandit demo``: a real server on embedded defaults, a simulated storefront driving it.

Starts a server on 127.0.0.1 (a free port) with a fresh data directory, publishes the simulated
catalog through the Catalog RPCs, and serves the simulated stream through gRPC — sessions,
multi-slot pages with position effects, delayed and lost feedback, deferred email pages, new
items arriving halfway (:mod:`training.storefront_client`). It prints, per block of events, the
expected clicks and purchases per 1,000 pages of the learned policy beside uniform random and the
oracle, the exploration rate, and where the event log and the learning-curve plot are.

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

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from engine.core import Engine
from engine.logreader import LogReader
from training.simulator import Storefront, WorldConfig
from training.storefront_client import SIMULATED_DEADLINE, Page, Recbandit, StorefrontClient

BLOCK = 1000


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
    """Per-page averages over a block of events; *expected* values come from the ground truth."""

    start: int
    events: int
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


def summarise(pages: list[Page], block: int = BLOCK) -> list[Block]:
    """Average the pages' expected rewards per block of ``block`` events, and count what happened."""
    blocks = []
    for first in range(0, len(pages), block):
        part = pages[first : first + block]
        n = len(part)
        blocks.append(
            Block(
                start=first,
                events=n,
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


def exploration_rate(reader: LogReader) -> float:
    """Mean over logged decisions of 1 − max(pmf) in slot 0: the chance a decision explored."""
    rates = [1.0 - max(event.decision.slots[0].pmf) for event in reader.joined()]
    return sum(rates) / len(rates)


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
    running = serve(host="127.0.0.1", port=0, data_dir=str(data_dir), reward_window=f"{REWARD_WINDOW_SECONDS}s",
                    seed=seed)
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
        blocks = summarise(pages, block)
        explored = exploration_rate(running.engine.log.reader)
        info = running.engine.model_info()
    finally:
        running.stop(grace=2.0)
    plot_learning_curve(blocks, data_dir / "learning_curve.png")
    if not quiet:
        print(format_table(blocks))
        print(f"\nexploration rate {explored:.1%} · model {info.model_version} · {info.bandit.exploration}")
        print(f"event log   {data_dir / 'events.db'}  (recbandit export-log --data-dir {data_dir} --out events.jsonl)")
        print(f"plot        {data_dir / 'learning_curve.png'}")
    if evaluate:
        _evaluate(data_dir, quiet)
    if not quiet:
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
