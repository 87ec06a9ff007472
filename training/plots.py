"""The figures logged with runs: an evaluation's candidates, an embeddings training's progress.

matplotlib with the Agg backend (no display needed); every function writes one PNG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.evaluate import Evaluation, PolicyEvaluation


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (files only, no display): the one way recbandit draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def candidate_order(evaluation: Evaluation, estimator: str | None = None) -> list[PolicyEvaluation]:
    """The policies to plot, highest value first by ``estimator`` (default: the primary one)."""
    key = estimator or evaluation.config.primary_estimator
    return sorted(evaluation.policies, key=lambda p: -p.overall[key].value)


def plot_candidates(evaluation: Evaluation, path: Path) -> None:
    """Every policy's value by the primary estimator as a bar with its interval, best first (matplotlib, Agg).

    The logging policy's observed value (the mean logged reward per slot) is the dashed horizontal
    line, the level to beat; candidates are blue, the baselines grey.
    """
    from training.evaluate import LOGGING

    plt = pyplot()

    key = evaluation.config.primary_estimator
    policies = candidate_order(evaluation, key)
    values = [p.overall[key].value for p in policies]
    errors = [[max(v - p.overall[key].ci_low, 0.0) for v, p in zip(values, policies)],
              [max(p.overall[key].ci_high - v, 0.0) for v, p in zip(values, policies)]]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 + 0.75 * len(policies)), 6))
    colours = ["tab:blue" if p.candidate is not None else "tab:gray" for p in policies]
    ax.bar(range(len(policies)), values, yerr=errors, color=colours, capsize=4, alpha=0.85)
    observed = evaluation.data.observed_value
    ax.axhline(observed, color="tab:red", linestyle="--", label=f"{LOGGING} policy, observed {observed:.3f}")
    ax.set_xticks(range(len(policies)), [p.name for p in policies], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{key.upper()} estimate of reward per slot ({evaluation.config.confidence:.0%} bootstrap interval)")
    ax.set_title(f"candidates on {evaluation.data.examples:,} slots of {evaluation.data.events:,} decisions")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training(history: Sequence[tuple[int, Mapping[str, float]]], metrics: Mapping[str, float], k: int,
                  path: Path) -> None:
    """An embeddings training: the holdout against popularity, and the holdout metrics by epoch.

    ``history`` is what ``on_epoch`` received, ``(epoch, metrics)`` per epoch; ``metrics`` the
    final ones. With fewer than two evaluated epochs, the right panel shows the seconds each
    epoch took instead.
    """
    plt = pyplot()
    names = [f"precision_at_{k}", f"recall_at_{k}", "auc"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    if all(n in metrics for n in names):
        xs = range(len(names))
        left.bar([x - 0.2 for x in xs], [metrics[n] for n in names], 0.4, label="lightfm", color="tab:blue")
        left.bar([x + 0.2 for x in xs], [metrics[f"popularity_{n}"] for n in names], 0.4, label="popularity",
                 color="tab:gray")
        left.set_xticks(list(xs), [f"precision@{k}", f"recall@{k}", "AUC"])
        left.set_title(f"time-ordered holdout: {int(metrics.get('eval_users', 0)):,} users")
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "no holdout (test_fraction 0)", ha="center", va="center", transform=left.transAxes)
    evaluated = [(e, m) for e, m in history if f"recall_at_{k}" in m]
    if len(evaluated) >= 2:
        for name, label in ((f"recall_at_{k}", f"recall@{k}"), (f"precision_at_{k}", f"precision@{k}")):
            right.plot([e for e, _ in evaluated], [m[name] for _, m in evaluated], marker="o", label=label)
            if f"popularity_{name}" in metrics:
                right.axhline(metrics[f"popularity_{name}"], linestyle="--", color="tab:gray", linewidth=1)
        right.set_ylabel("holdout (dashed: popularity)")
        right.legend(fontsize=8)
    else:  # evaluated once, at the end (eval_every 0): what each epoch cost instead
        right.plot([e for e, _ in history], [m.get("epoch_seconds", 0.0) for _, m in history], marker=".")
        right.set_ylabel("seconds per epoch (--eval-every N: holdout by epoch)")
    right.set_xlabel("epoch")
    right.set_title("by epoch")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
