"""``recbandit demo``: a real server on embedded defaults, a simulated storefront driving it.

Starts a server on 127.0.0.1 (a free port) with a fresh data directory, publishes the simulated
catalog through the Catalog RPCs, plays a stream of Recommend → Feedback rounds through gRPC, and
prints per 1,000 events the expected reward of the learned policy beside uniform random and the
oracle, plus where the event log and the learning-curve plot are.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc

from server.app import start
from server.settings import Settings
from training.simulator import Storefront, WorldConfig
from training.storefront_client import Round, StorefrontClient

BLOCK = 1000


@dataclass(frozen=True, slots=True)
class Block:
    start: int
    events: int
    learned: float
    random: float
    oracle: float
    click_through: float

    @property
    def ratio(self) -> float:
        return self.learned / self.oracle


def summarise(rounds: list[Round], block: int = BLOCK) -> list[Block]:
    """Average expected rewards and the observed click-through per block of ``block`` events."""
    blocks = []
    for start in range(0, len(rounds), block):
        part = rounds[start : start + block]
        n = len(part)
        blocks.append(
            Block(
                start=start,
                events=n,
                learned=sum(r.expected_reward for r in part) / n,
                random=sum(r.random_reward for r in part) / n,
                oracle=sum(r.oracle_reward for r in part) / n,
                click_through=sum(r.clicked for r in part) / n,
            )
        )
    return blocks


def format_table(blocks: list[Block]) -> str:
    lines = [
        "| events        | learned | random | oracle | learned/oracle | clicks/1k |",
        "|---------------|---------|--------|--------|----------------|-----------|",
    ]
    for b in blocks:
        span = f"{b.start + 1}-{b.start + b.events}"
        lines.append(
            f"| {span:<13} | {b.learned:7.3f} | {b.random:6.3f} | {b.oracle:6.3f} | {b.ratio:14.1%} "
            f"| {b.click_through * 1000:9.0f} |"
        )
    return "\n".join(lines)


def exploration_rate(engine_log) -> float:  # type: ignore[no-untyped-def]
    """Mean over logged decisions of 1 − max(pmf): the chance a decision explored."""
    rates = [1.0 - max(record["slots"][0]["pmf"]) for record in engine_log.joined()]
    return sum(rates) / len(rates)


def plot_learning_curve(blocks: list[Block], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [b.start + b.events for b in blocks]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, [b.oracle for b in blocks], label="oracle", linestyle="--")
    ax.plot(x, [b.learned for b in blocks], label="recbandit", marker="o")
    ax.plot(x, [b.random for b in blocks], label="uniform random", linestyle=":")
    ax.set_xlabel("events")
    ax.set_ylabel(f"expected reward per event (mean over {BLOCK})")
    ax.set_title("recbandit demo: learning while serving")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_demo(
    events: int = 6000, data_dir: Path | None = None, seed: int = 7, concurrency: int = 4, quiet: bool = False
) -> list[Block]:
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix="recbandit-demo-"))
    settings = Settings(host="127.0.0.1", port=0, data_dir=str(data_dir), reward_window="2s", seed=seed)
    running = start(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            client = StorefrontClient(channel, Storefront(WorldConfig(seed=seed)))
            client.publish_catalog()
            rounds = _play(client, events, concurrency, quiet)
        running.engine.wait_until_learned()
        blocks = summarise(rounds)
        explored = exploration_rate(running.engine.log)
        info = running.engine.model_info()
    finally:
        running.stop(grace=2.0)
    plot_learning_curve(blocks, data_dir / "learning_curve.png")
    if not quiet:
        print(format_table(blocks))
        print(f"\nexploration rate {explored:.1%} · model {info.model_version} · {info.bandit.exploration}")
        print(f"event log   {data_dir / 'events.db'}  (recbandit export-log --data-dir {data_dir} --out events.jsonl)")
        print(f"plot        {data_dir / 'learning_curve.png'}")
    return blocks


def _play(client: StorefrontClient, events: int, concurrency: int, quiet: bool) -> list[Round]:
    from tqdm import tqdm

    with tqdm(total=events, unit="event", disable=quiet, desc="storefront") as bar:
        return client.play_many(events, concurrency=concurrency, on_round=lambda _: bar.update())
