"""``make bench-quality``: every policy on the same simulated stream, measured against the oracle.

One stream of visits (one slot per visit, 20 candidates from a 200-item catalog, same seed for
everyone). Each policy chooses, the simulated user clicks or not (the same uniform numbers for
every policy: common random numbers), and the policy learns the clicks after every 50 visits. A policy's score
is the *expected* reward of what it showed — the true click probability of the chosen item —
which has far less noise than the realised clicks; the oracle shows the best candidate of every
visit. Reported: average over the whole stream and over the last 20 %, each over the oracle's.

Policies run in separate processes (two at a time on two cores); the table and a plot of the
learning curves are written to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.bandit import EXPLORATION_PARAMETERS, BanditConfig
from training.policies import BanditPolicy, LinearPolicy, OraclePolicy, Policy, PopularityPolicy, RandomPolicy
from training.simulator import Storefront, WorldConfig

PEERS = ("MABWiser LinUCB", "MABWiser LinTS", "popularity", "uniform random", "oracle")


def make_policy(name: str, world: Storefront, seed: int) -> Policy:
    """A policy by its name in the table: ``recbandit <exploration>`` or one of :data:`PEERS`."""
    if name.startswith("recbandit "):  # "recbandit squarecb" or, with a parameter, "recbandit squarecb:30"
        exploration, _, parameter = name.removeprefix("recbandit ").partition(":")
        config = BanditConfig(exploration=exploration, exploration_parameter=float(parameter) if parameter else None)
        return BanditPolicy(world, config, seed=seed, name=name)
    if name.startswith("MABWiser "):
        return LinearPolicy(world, name.removeprefix("MABWiser "), alpha=1.0, seed=seed)
    return {"popularity": PopularityPolicy, "uniform random": lambda: RandomPolicy(seed), "oracle": lambda: OraclePolicy(world)}[name]()


@dataclass(frozen=True, slots=True)
class StreamResult:
    name: str
    expected: np.ndarray  # per visit: the true click probability of the shown item
    clicks: np.ndarray  # per visit: 1.0 if the user clicked
    seconds: float


def play_stream(name: str, config: WorldConfig, events: int, seed: int = 0, feedback_batch: int = 50) -> StreamResult:
    """Run one policy over the stream of ``events`` visits and record what it earned.

    Feedback arrives in batches of ``feedback_batch`` visits: every policy serves a batch, then
    learns its rewards — the same delay for everyone, as on a storefront where clicks come later.
    """
    world = Storefront(config)
    policy = make_policy(name, world, seed)
    expected, clicks = np.zeros(events), np.zeros(events)
    visits = world.visits(events)
    started = time.perf_counter()
    for start in range(0, events, feedback_batch):
        batch = visits[start : start + feedback_batch]
        choices = policy.choose(batch)
        rewards = []
        for n, (visit, choice) in enumerate(zip(batch, choices, strict=True), start):
            item_id = visit.candidates[choice.index]
            ((clicked, _),) = world.react(visit, [item_id])
            expected[n] = world.click_probabilities(visit, (item_id,))[0]
            clicks[n] = clicked
            rewards.append(float(clicked))
        policy.learn(batch, choices, rewards)
    return StreamResult(name, expected, clicks, time.perf_counter() - started)


def oracle_and_random(config: WorldConfig, events: int) -> tuple[np.ndarray, np.ndarray]:
    """Per visit: the oracle's expected reward and uniform random's."""
    world = Storefront(config)
    p = [world.click_probabilities(v) for v in world.visits(events)]
    return np.array([x.max() for x in p]), np.array([x.mean() for x in p])


def summary_rows(results: list[StreamResult], oracle: np.ndarray, tail: float = 0.2) -> list[dict[str, float | str]]:
    last = int(len(oracle) * (1 - tail))
    rows = []
    for r in results:
        rows.append(
            {
                "policy": r.name,
                "whole": r.expected.sum() / oracle.sum(),
                "last": r.expected[last:].sum() / oracle[last:].sum(),
                "ctr": r.clicks.mean(),
                "seconds": r.seconds,
            }
        )
    return rows


def format_rows(rows: list[dict[str, float | str]]) -> str:
    lines = [
        "| policy | reward / oracle, whole stream | reward / oracle, last 20% | clicks per 1k | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['policy']} | {row['whole']:.3f} | {row['last']:.3f} | {float(row['ctr']) * 1000:.0f} "
            f"| {row['seconds']:.0f} |"
        )
    return "\n".join(lines)


def plot_curves(results: list[StreamResult], oracle: np.ndarray, path: Path, window: int = 2500) -> None:
    from training.plots import pyplot

    plt = pyplot()

    kernel = np.ones(window)
    reference = np.convolve(oracle, kernel, mode="valid")
    x = np.arange(window, len(oracle) + 1)
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in results:
        ax.plot(x, np.convolve(r.expected, kernel, mode="valid") / reference, label=r.name)
    ax.set_xlabel("events")
    ax.set_ylabel(f"expected reward / oracle (moving window of {window})")
    ax.set_title("recbandit quality benchmark: the same simulated stream for every policy")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=11, help="the world's seed: catalog, users, stream")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build/bench-quality"))
    parser.add_argument("--policies", nargs="*",
                        help='default: every exploration algorithm and every peer; "recbandit squarecb:30" sets a parameter')
    args = parser.parse_args(argv)
    names = args.policies or [f"recbandit {a}" for a in EXPLORATION_PARAMETERS] + list(PEERS)
    config = WorldConfig(multi_slot=False, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    print(f"{len(names)} policies × {args.events:,} events, world seed {args.seed}, {args.workers} processes")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {name: pool.submit(play_stream, name, config, args.events) for name in names}
        oracle, _ = oracle_and_random(config, args.events)
        results = []
        for name, future in futures.items():
            results.append(future.result())
            print(f"  {name:<24} done in {results[-1].seconds:5.0f} s", flush=True)

    rows = summary_rows(results, oracle)
    table = format_rows(rows)
    print()
    print(table)
    (args.out / "quality.md").write_text(table + "\n")
    plot_curves(results, oracle, args.out / "learning_curves.png")
    print(f"\ntable {args.out / 'quality.md'} · plot {args.out / 'learning_curves.png'} · "
          f"{time.perf_counter() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
