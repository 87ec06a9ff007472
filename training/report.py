"""``recbandit report``'s output: the learning report as text and as a PNG.

The command (:mod:`server.cli`) asks a running server through ``Admin/GetLearningReport``; this
module only reads the engine's report types. It prints one table per model version — the served policy's observed reward per decision and the estimates of uniform
random, the first candidate, the live model's greedy choice (in-sample) and the deciding model's
greedy choice, each with its 95% interval and effective sample size — and the verdict lines, then
the campaign section (:func:`training.campaign.format_campaign`: per arm, channel and surface, and
the uplift over the control arm), and writes a PNG of the learning numbers with their intervals as
error bars.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from engine.campaign import CONTROL
from engine.report import LearningReport, Verdict, VersionReport
from training.campaign import format_campaign

LABELS = {
    "random": "uniform random",
    "first_candidate": "first candidate",
    "greedy": "greedy now (in-sample)",
    "greedy_at_decision": "greedy at decision",
}
MAX_PANELS = 6
"""The PNG draws the whole window and the newest versions, up to this many panels."""


def format_report(report: LearningReport) -> str:
    """The report as text: the window, a table per version (the whole window first), the verdicts."""
    start, end = _time(report.window_start), _time(report.window_end)
    lines = [f"Learning report {start} to {end} UTC; greedy now = live model {report.model_version}", ""]
    for version in _versions(report):
        lines += [*_table(version), ""]
    lines.append("Verdicts:")
    lines += [f"  {v.model_version}: {v.summary}" for v in _versions(report)]
    return "\n".join([*lines, *_campaign(report)])


def _campaign(report: LearningReport) -> list[str]:
    """The campaign section: the same decisions per arm, channel and surface, with the uplifts."""
    campaign = report.campaign
    if campaign is None:
        return []
    lines = ["", "Campaign: did it pay? (recbandit over the control arm, --control-share)", format_campaign(campaign)]
    if campaign.decisions and CONTROL not in campaign.overall().arms:
        lines.append("(no control arm in the window: serve with --control-share F to measure the uplift)")
    return lines


def _versions(report: LearningReport) -> list[VersionReport]:
    """The whole window, then each version; one version alone stands for the whole window."""
    if len(report.versions) == 1:
        return [report.versions[0]]
    return [report.overall, *report.versions]


def _table(version: VersionReport) -> list[str]:
    lines = [f"{version.model_version} — {version.decisions} decisions with a final reward (slot 0)"]
    if version.observed is None or version.lift is None:
        return [*lines, f"  {version.summary}"]
    row = "  {:<30} {:>8} {:>18} {:>7}"
    observed, lift = version.observed, version.lift
    lines.append(row.format("policy", "reward", "95% interval", "ESS"))
    lines.append(row.format("served (observed)", f"{observed.value:.3f}",
                            _interval(observed.ci_low, observed.ci_high), f"{version.decisions}"))
    for e in version.estimates:
        name = f"{LABELS.get(e.policy, e.policy)} ({e.estimator})"
        if e.estimate.ess > 0:
            lines.append(row.format(name, f"{e.estimate.value:.3f}", _interval(e.estimate.ci_low, e.estimate.ci_high),
                                    f"{e.estimate.ess:.0f}"))
        else:  # no logged decision chose what it would: its estimate means nothing
            lines.append(row.format(name, "n/a", "no support", "0"))
    lines.append(row.format("lift: served − random", f"{lift.value:+.3f}",
                            _interval(lift.ci_low, lift.ci_high), "").rstrip())
    return [*lines, f"  → {version.summary}"]


def _interval(low: float, high: float) -> str:
    return f"[{low:.3f}, {high:.3f}]"


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


def plot_report(report: LearningReport, path: Path) -> None:
    """One panel per version (the whole window first): each policy's reward per decision, 95% intervals."""
    from training.plots import pyplot

    plt = pyplot()

    versions = _versions(report)[:MAX_PANELS]
    fig, axes = plt.subplots(len(versions), 1, figsize=(8, 2.2 + 2.6 * len(versions)), squeeze=False)
    for ax, version in zip(axes[:, 0], versions, strict=True):
        _panel(ax, version)
    fig.suptitle("Is it learning? Reward per decision, slot 0")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _panel(ax, version: VersionReport) -> None:  # type: ignore[no-untyped-def]
    ax.set_title(f"{version.model_version}: {version.summary}", fontsize=9)
    if version.verdict is Verdict.NO_DATA or version.observed is None:
        ax.set_axis_off()
        return
    supported = [e for e in version.estimates if e.estimate.ess > 0]  # no bar for an estimate without support
    names = ["served (observed)", *(LABELS.get(e.policy, e.policy) for e in supported)]
    estimates = [version.observed, *(e.estimate for e in supported)]
    values = [e.value for e in estimates]
    errors = [[max(e.value - e.ci_low, 0.0) for e in estimates], [max(e.ci_high - e.value, 0.0) for e in estimates]]
    colours = ["tab:red", *("tab:gray" for _ in supported)]
    ax.barh(range(len(names)), values, xerr=errors, color=colours, capsize=4, alpha=0.85)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("reward per decision (95% bootstrap interval)", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
