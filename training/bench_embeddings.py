"""Benchmark the LightFM embeddings: top-N retrieval latency and training time.

``python -m training.bench_embeddings`` prints two tables:

- retrieval: :meth:`engine.embeddings.Embeddings.top_n` for top-100 over 10k, 100k and 1M items
  (64 components, random representations, a new random user each call, 10 excluded items),
  p50 and p99 of ``time.perf_counter()``, with OpenBLAS's default threads and with one thread (the
  better choice in a server whose worker threads already use every core); plus :meth:`~engine.embeddings.Embeddings.affinity_features`
  for 100 candidates, the other per-request cost;
- training: :func:`training.embeddings.train_embeddings` on 1M interactions of the planted world;
- reward: the simulated storefront (:mod:`training.simulator`, one slot per visit) played by
  recbandit's bandit with and without the LightFM affinity features, the embeddings trained on
  the clicks of an earlier part of the same stream (:func:`reward_with_and_without`).

The machine's load average (``os.getloadavg``) is printed with the figures: other processes
sharing the cores move them.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from collections.abc import Sequence

from engine.embeddings import Embeddings, FeatureTable, Representation
from training.embeddings import EmbeddingConfig, Interaction, TrainingData, planted_world, train_embeddings
from training.simulator import Storefront, Visit, WorldConfig


def synthetic_index(n_items: int, components: int, seed: int = 0) -> Embeddings:
    rng = np.random.default_rng(seed)
    tokens = ["segment=a"]
    table = FeatureTable(tokens, rng.normal(0, 0.3, (1, components)).astype(np.float32), np.zeros(1, np.float32))
    vectors = rng.normal(0, 0.3, (n_items, components)).astype(np.float32)
    biases = rng.normal(0, 0.5, n_items).astype(np.float32)
    return Embeddings(table, table, [f"item-{i}" for i in range(n_items)], biases, vectors)


def bench_retrieval(n_items: int, components: int, calls: int, seed: int = 0) -> dict[str, float]:
    embeddings = synthetic_index(n_items, components, seed)
    rng = np.random.default_rng(seed + 1)
    users = [Representation(0.0, rng.normal(0, 0.3, components).astype(np.float32)) for _ in range(calls + 10)]
    exclude = [f"item-{i}" for i in rng.choice(n_items, 10, replace=False)]
    ids = [i for i, _ in embeddings.top_n(users[0], 100)]
    for user in users[:10]:  # warm-up
        embeddings.top_n(user, 100, exclude)
    top, affinity = [], []
    for user in users[10:]:
        t = time.perf_counter()
        embeddings.top_n(user, 100, exclude)
        top.append(time.perf_counter() - t)
        t = time.perf_counter()
        embeddings.affinity_features(user, ids)
        affinity.append(time.perf_counter() - t)
    ms = 1000 * np.array(top)
    return {"items": n_items, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "affinity_p50": float(np.percentile(1000 * np.array(affinity), 50))}


def bench_training(interactions: int, components: int, epochs: int, threads: int) -> dict[str, float]:
    per_user = 20
    t = time.perf_counter()
    world = planted_world(n_users=interactions // per_user, n_items=10_000, n_categories=50, per_user=per_user, seed=0)
    generated = time.perf_counter() - t
    epoch_seconds: list[float] = []
    config = EmbeddingConfig(components=components, epochs=epochs, threads=threads, refit=False, max_eval_users=2000)
    result = train_embeddings(world, config, on_epoch=lambda e, m: epoch_seconds.append(m["epoch_seconds"]))
    m = result.metrics
    return {"interactions": m["interactions"], "users": m["users"], "items": m["items"], "generate_s": generated,
            "train_s": m["train_seconds"], "epoch_s": float(np.mean(epoch_seconds)),
            "recall": m["recall_at_10"], "pop_recall": m["popularity_recall_at_10"]}


def stream_interactions(world: Storefront, visits: Sequence[Visit], seed: int = 0) -> TrainingData:
    """The clicks of ``visits`` as LightFM interactions: each candidate is clicked with its true probability.

    Like a storefront's logged grid of candidates; seeded, so the same visits give the same clicks.
    """
    rng = np.random.default_rng((seed, 7))
    interactions, users = [], {}
    for visit in visits:
        users[visit.user_id] = visit.user_features
        clicked = rng.random(len(visit.candidates)) < world.click_probabilities(visit)
        interactions += [Interaction(visit.user_id, item_id, 1.0, float(visit.index))
                         for item_id, c in zip(visit.candidates, clicked, strict=True) if c]
    return TrainingData(interactions, users, world.initial_items())


def play(policy, world: Storefront, visits: Sequence[Visit], batch: int = 50) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Expected clicks of each visit's shown item; the policy learns the sampled click a batch later."""
    values = []
    for start in range(0, len(visits), batch):
        page = visits[start : start + batch]
        choices = policy.choose(page)
        rewards = []
        for visit, choice in zip(page, choices, strict=True):
            shown = [visit.candidates[choice.index]]
            values.append(world.page_value(visit, shown)[0])
            rewards.append(float(world.react(visit, shown)[0][0]))
        policy.learn(page, choices, rewards)
    return np.array(values)


def reward_with_and_without(seed: int = 0, train_visits: int = 3000, eval_visits: int = 4000,
                            users: int = 2000, components: int = 16) -> dict[str, float]:
    """Mean expected clicks per visit of the bandit without and with embeddings, with random and oracle.

    The embeddings are trained on the clicks of the first ``train_visits`` visits; both bandits
    start untrained on the next ``eval_visits`` (the same visits and reactions for both).
    """
    from training.policies import BanditPolicy

    world = Storefront(WorldConfig(multi_slot=False, n_users=users, seed=seed))
    data = stream_interactions(world, world.visits(train_visits), seed)
    t = time.perf_counter()
    embeddings = train_embeddings(data, EmbeddingConfig(components=components, epochs=10, test_fraction=0.0, seed=seed),
                                  progress=False).embeddings
    trained = time.perf_counter() - t
    embeddings.sync_catalog(world.items)
    visits = world.visits(eval_visits, start=train_visits)
    results = {}
    for name, e in (("without", None), ("with", embeddings)):
        policy = BanditPolicy(world, seed=seed, embeddings=e)
        try:
            values = play(policy, world, visits)
        finally:
            policy.close()
        results[name], results[f"{name}_last_half"] = float(values.mean()), float(values[len(values) // 2 :].mean())
    results["random"] = float(np.mean([world.random_page_value(v)[0] for v in visits]))
    results["oracle"] = float(np.mean([world.page_value(v, world.oracle(v))[0] for v in visits]))
    results.update(interactions=len(data.interactions), train_s=trained)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", default="32,64", help="comma-separated; 32 is train-embeddings' default")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--train-components", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--reward-seeds", default="0,1,2", help="comma-separated seeds of the reward comparison")
    args = parser.parse_args(argv)

    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    from threadpoolctl import threadpool_limits  # installed with scikit-learn, which LightFM needs

    print("\n| items     | components | BLAS threads | top-100 p50 ms | top-100 p99 ms | affinity(100) p50 ms |")
    print("|-----------|-----------:|-------------:|---------------:|---------------:|---------------------:|")
    for components in (int(c) for c in args.components.split(",")):
        for n in (int(s) for s in args.sizes.split(",")):
            for blas_threads in (None, 1):
                with threadpool_limits(limits=blas_threads, user_api="blas"):
                    r = bench_retrieval(n, components, args.calls)
                label = "default" if blas_threads is None else str(blas_threads)
                print(f"| {n:>9,} | {components:>10} | {label:>12} | {r['p50']:14.2f} | {r['p99']:14.2f} | "
                      f"{r['affinity_p50']:20.2f} |", flush=True)
    print(f"load average after retrieval: {os.getloadavg()[0]:.2f}")
    print("\nReward: expected clicks per visit on the simulated storefront (one slot, 20 candidates, 2,000 users),")
    print("embeddings trained on the clicks of visits 0-2,999, both bandits learning from scratch on visits 3,000-6,999")
    print("| seed | random | bandit | bandit + embeddings | last half: bandit | + embeddings | oracle | interactions |")
    print("|-----:|-------:|-------:|--------------------:|------------------:|-------------:|-------:|-------------:|")
    for seed in (int(s) for s in args.reward_seeds.split(",")):
        r = reward_with_and_without(seed)
        print(f"| {seed:>4} | {r['random']:.4f} | {r['without']:.4f} | {r['with']:19.4f} | {r['without_last_half']:17.4f} | "
              f"{r['with_last_half']:12.4f} | {r['oracle']:.4f} | {r['interactions']:>12,.0f} |", flush=True)
    if args.skip_training:
        return
    r = bench_training(args.interactions, args.train_components, args.epochs, args.threads)
    print(f"\nLightFM warp, {args.train_components} components, {args.epochs} epochs, {args.threads} threads")
    print("| interactions | users  | items  | s / epoch | holdout fit + eval s | recall@10 | popularity |")
    print("|-------------:|-------:|-------:|----------:|---------------------:|----------:|-----------:|")
    print(f"| {r['interactions']:>12,.0f} | {r['users']:>6,.0f} | {r['items']:>6,.0f} | {r['epoch_s']:9.2f} | "
          f"{r['train_s']:20.1f} | {r['recall']:9.3f} | {r['pop_recall']:10.3f} |")
    print(f"(generating the planted world took {r['generate_s']:.1f} s; load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
