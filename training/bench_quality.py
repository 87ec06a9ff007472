"""``make bench-quality``: every policy on the same simulated stream, measured against the oracle.

One stream of visits (one slot per visit, 20 candidates from a 200-item catalog, same seed for
everyone). Each policy chooses, the simulated user clicks or not (the same uniform numbers for
every policy: common random numbers), and the policy learns the clicks after every 50 visits. A policy's score
is the *expected* reward of what it showed — the true click probability of the chosen item —
which has far less noise than the realised clicks; the oracle shows the best candidate of every
visit. Reported: average over the whole stream and over the last 20 %, each over the oracle's.

A seed draws a whole world (catalog, users, tastes, visits, clicks) and the policies' own draws.
Every policy plays the first of ``--seeds``; recbandit's bandits (among them the server's default,
:data:`DEFAULT_POLICY`) play every seed, and a second table gives each one's last-20 % ratio per
seed with the mean and the minimum, so that a default is not chosen on one lucky world. Policies
named with ``--policies`` play every seed. The server's default plays through the Engine itself
(``recbandit squarecb (engine)``: :class:`~training.policies.EnginePolicy`); the other algorithms,
and any name without `` (engine)``, through :class:`~training.policies.BanditPolicy`.

``--world history`` plays a world whose users' clicks depend on their history (category loyalty,
repeat purchases, recency: :class:`~training.simulator.WorldConfig`), and by default compares the
server's bandit with and without user portraits (``recbandit squarecb + portraits``, fed the
portrait features the server would log: :mod:`engine.portraits`).

Policies run in separate processes (two at a time on two cores); the tables and a plot of the
learning curves (first seed) are written to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.bandit import EXPLORATION_PARAMETERS, BanditConfig
from training.policies import BanditPolicy, EnginePolicy, LinearPolicy, OraclePolicy, Policy, PopularityPolicy, \
    RandomPolicy
from training.simulator import Storefront, WorldConfig

PEERS = ("MABWiser LinUCB", "MABWiser LinTS", "popularity", "uniform random", "oracle")
ENGINE = " (engine)"
"""A bandit's name ends with this when it plays through the server's own :class:`~engine.core.Engine`
(:class:`~training.policies.EnginePolicy`): decide, log, record_reward, learn."""
DEFAULT_POLICY = f"recbandit {BanditConfig().exploration}{ENGINE}"
"""The bandit a server runs with no settings: ``BanditConfig()``'s algorithm and default parameter,
played through the Engine. The other algorithms play through :class:`~training.policies.BanditPolicy`,
which gives the same pmfs from the same lines and seed (``tests/test_conformance.py``) in a fifth
of the time (6 s against 26–33 s for 50,000 visits)."""
SEEDS = (0, 1, 2)


PORTRAITS = " + portraits"
"""A bandit's name ends with this when it decides with user portraits (``recbandit squarecb + portraits``)."""
HISTORY_POLICIES = ("recbandit squarecb", f"recbandit squarecb{PORTRAITS}", "uniform random", "oracle")
"""What ``--world history`` compares by default: the default bandit with and without portraits."""


def world_config(seed: int, history: bool = False) -> WorldConfig:
    """The benchmark's world: one slot per visit, everything else :class:`WorldConfig`'s defaults.

    ``history``: users whose clicks depend on their history (:class:`~training.simulator.WorldConfig`),
    500 of them (returning customers: about 100 visits each in 50,000), whose segments say less of
    their tastes (``taste_scale`` 0.5) than their favourite category does.
    """
    if history:
        return WorldConfig(multi_slot=False, seed=seed, history=True, n_users=500, taste_scale=0.5)
    return WorldConfig(multi_slot=False, seed=seed)


def make_policy(name: str, world: Storefront, seed: int) -> Policy:
    """A policy by its name in the table: ``recbandit <exploration>`` or one of :data:`PEERS`."""
    if name.startswith("recbandit "):  # "recbandit squarecb", "recbandit squarecb:100 lr 1", "… (engine)"
        engine = name.endswith(ENGINE)
        bare = name.removesuffix(ENGINE)
        portraits = bare.endswith(PORTRAITS)  # as the server decides with --portraits on
        spec, _, rate = bare.removeprefix("recbandit ").removesuffix(PORTRAITS).partition(" lr ")
        exploration, _, parameter = spec.partition(":")
        config = BanditConfig(exploration=exploration, exploration_parameter=float(parameter) if parameter else None,
                              **({"learning_rate": float(rate)} if rate else {}))
        if engine:
            return EnginePolicy(world, config, seed=seed, name=name, portraits=portraits)
        return BanditPolicy(world, config, seed=seed, name=name, portraits=portraits)
    if name.startswith("MABWiser "):
        return LinearPolicy(world, name.removeprefix("MABWiser "), alpha=1.0, seed=seed)
    return {"popularity": PopularityPolicy, "uniform random": lambda: RandomPolicy(seed), "oracle": lambda: OraclePolicy(world)}[name]()


def default_or(name: str) -> str:
    """:data:`DEFAULT_POLICY` (through the Engine) for the default bandit's name, else ``name``."""
    return DEFAULT_POLICY if name + ENGINE == DEFAULT_POLICY else name


@dataclass(frozen=True, slots=True)
class StreamResult:
    name: str
    expected: np.ndarray  # per visit: the true click probability of the shown item
    clicks: np.ndarray  # per visit: 1.0 if the user clicked
    seconds: float
    seed: int = 0  # the policy's draws; the world's is the config's


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
    try:
        for start in range(0, events, feedback_batch):
            batch = visits[start : start + feedback_batch]
            choices = policy.choose(batch)
            rewards = []
            for n, (visit, choice) in enumerate(zip(batch, choices, strict=True), start):
                item_id = visit.candidates[choice.index]
                outcome = world.react(visit, [item_id])
                ((clicked, _),) = outcome
                expected[n] = world.click_probabilities(visit, (item_id,))[0]
                world.remember(visit, [item_id], outcome)  # a world with history: what the user did stays
                clicks[n] = clicked
                rewards.append(float(clicked))
            policy.learn(batch, choices, rewards)
    finally:
        policy.close()
    return StreamResult(name, expected, clicks, time.perf_counter() - started, seed)


def oracle_and_random(config: WorldConfig, events: int) -> tuple[np.ndarray, np.ndarray]:
    """Per visit: the oracle's expected reward and uniform random's. In a world with history the
    oracle plays its own stream (its users remember what it showed them), and random's is the mean
    candidate's under the oracle's history."""
    world = Storefront(config)
    p = []
    for visit in world.visits(events):
        p.append(world.click_probabilities(visit))
        if config.history:
            best = [visit.candidates[int(np.argmax(p[-1]))]]
            world.remember(visit, best, world.react(visit, best))
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


@dataclass(frozen=True, slots=True)
class SeedSummary:
    """One policy over several seeds: its reward / oracle over the last 20 % on each."""

    policy: str
    seeds: tuple[int, ...]
    last: tuple[float, ...]
    whole: float  # the whole stream's ratio, averaged over the seeds

    @property
    def mean(self) -> float:
        return float(np.mean(self.last))

    @property
    def min(self) -> float:
        return min(self.last)


def seed_rows(results: list[StreamResult], oracles: dict[int, np.ndarray], tail: float = 0.2) -> list[SeedSummary]:
    """Per policy that played more than one seed, in the order of ``results``."""
    rows = []
    for name in dict.fromkeys(r.name for r in results):
        played = [r for r in results if r.name == name]
        if len(played) > 1:
            summaries = [summary_rows([r], oracles[r.seed], tail)[0] for r in played]
            rows.append(SeedSummary(name, tuple(r.seed for r in played), tuple(float(x["last"]) for x in summaries),
                                    float(np.mean([float(x["whole"]) for x in summaries]))))
    return rows


def format_seed_rows(rows: list[SeedSummary]) -> str:
    seeds = rows[0].seeds
    lines = [
        "| policy | " + " | ".join(f"last 20%, seed {s}" for s in seeds) + " | **mean** | **min** | whole stream, mean |",
        "|---|" + "---:|" * (len(seeds) + 3),
    ]
    for row in rows:
        name = f"{row.policy} (the default)" if row.policy == DEFAULT_POLICY else row.policy
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in row.last)
                     + f" | **{row.mean:.3f}** | **{row.min:.3f}** | {row.whole:.3f} |")
    return "\n".join(lines)


def plot_curves(results: list[StreamResult], oracle: np.ndarray, path: Path, window: int = 2500) -> None:
    from training.plots import pyplot

    plt = pyplot()

    window = min(window, max(1, len(oracle) // 5))  # a short stream (--events) still gets a curve
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
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS),
                        help="world and draw seeds: every policy plays the first, recbandit's bandits all of them")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build/bench-quality"))
    parser.add_argument("--policies", nargs="*",
                        help='default: every exploration algorithm and every peer; "recbandit squarecb:100" sets a '
                             'parameter, "recbandit squarecb:100 lr 1" the learning rate too; policies named here '
                             "play every seed")
    parser.add_argument("--world", choices=("storefront", "history"), default="storefront",
                        help="history: users whose clicks depend on what they clicked and bought before; by "
                             "default the server's bandit with and without portraits")
    args = parser.parse_args(argv)
    history = args.world == "history"
    names = args.policies or (list(HISTORY_POLICIES) if history
                              else [default_or(f"recbandit {a}") for a in EXPLORATION_PARAMETERS] + list(PEERS))
    every_seed = set(names) if args.policies else {n for n in names if n.startswith("recbandit ")}
    jobs = [(name, seed) for seed in args.seeds for name in names if seed == args.seeds[0] or name in every_seed]
    args.out.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    print(f"{len(jobs)} runs of {args.events:,} events ({len(names)} policies on seed {args.seeds[0]}; "
          f"{', '.join(sorted(every_seed))} on seeds {' '.join(map(str, args.seeds))}), {args.workers} processes")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(play_stream, name, world_config(seed, history), args.events, seed) for name, seed in jobs]
        oracles = {seed: oracle_and_random(world_config(seed, history), args.events)[0] for seed in args.seeds}
        results = []
        for future in futures:
            results.append(future.result())
            print(f"  {results[-1].name:<24} seed {results[-1].seed:<3} done in {results[-1].seconds:5.0f} s", flush=True)

    first = [r for r in results if r.seed == args.seeds[0]]
    table = f"Seed {args.seeds[0]}:\n\n" + format_rows(summary_rows(first, oracles[args.seeds[0]]))
    if across := seed_rows(results, oracles):
        table += "\n\nAcross seeds:\n\n" + format_seed_rows(across)
    print()
    print(table)
    (args.out / "quality.md").write_text(table + "\n")
    plot_curves(first, oracles[args.seeds[0]], args.out / "learning_curves.png")
    print(f"\ntable {args.out / 'quality.md'} · plot {args.out / 'learning_curves.png'} · "
          f"{time.perf_counter() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
