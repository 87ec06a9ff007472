"""``recbandit campaign-report``: the campaign's results as a table and a figure (:mod:`engine.campaign`)."""

from __future__ import annotations

import math
from pathlib import Path

from engine.campaign import CONTROL, METRICS, RECBANDIT, CampaignReport, SegmentResult

_LABELS = {"ctr": "CTR", "conversion_rate": "conversion", "revenue_per_mille": "revenue / 1k"}


def _value(metric: str, value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.2f}" if metric == "revenue_per_mille" else f"{100 * value:.2f}%"


def _uplift(segment: SegmentResult, metric: str) -> str:
    found = next((u for u in segment.uplifts if u.metric == metric), None)
    if found is None or not math.isfinite(found.estimate):
        return "—"
    interval = "" if math.isnan(found.low) else f" [{100 * found.low:+.1f}%, {100 * found.high:+.1f}%]"
    return f"{100 * found.estimate:+.1f}%{interval}"


def format_campaign(report: CampaignReport) -> str:
    """A Markdown table: per segment and arm, the counts and metrics; per segment, the uplifts."""
    lines = [f"{report.decisions} decisions with closed reward windows; clicks: {', '.join(report.click_labels)}; "
             f"purchases: {', '.join(report.purchase_labels)}; uplift intervals: 95%, {report.resamples} "
             "resamples of users",
             "",
             "| channel | surface | arm | users | impressions | CTR | conversion | revenue / 1k |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for segment in report.segments:
        for arm in (RECBANDIT, CONTROL, *sorted(set(segment.arms) - {RECBANDIT, CONTROL})):
            counts = segment.arms.get(arm)
            if counts is None:
                continue
            metrics = " | ".join(_value(m, counts.metric(m)) for m in METRICS)
            lines.append(f"| {segment.channel} | {segment.surface} | {arm} | {counts.users} | {counts.impressions} "
                         f"| {metrics} |")
        if segment.uplifts:
            uplifts = " | ".join(_uplift(segment, m) for m in METRICS)
            lines.append(f"| {segment.channel} | {segment.surface} | **uplift** | | | {uplifts} |")
    lines += [f"({note})" for note in report.notes]
    return "\n".join(lines)


def plot_campaign(report: CampaignReport, path: Path) -> None:
    """Each metric's uplift per segment with its interval, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    segments = [s for s in report.segments if s.uplifts]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 0.5 * max(len(segments), 2) + 1.5),
                             squeeze=False)
    names = [f"{s.channel} / {s.surface}" for s in segments]
    for ax, metric in zip(axes[0], METRICS, strict=True):
        uplifts = [next(u for u in s.uplifts if u.metric == metric) for s in segments]
        ys = range(len(segments))
        xs = [100 * u.estimate for u in uplifts]
        errors = [[max(0.0, 100 * (u.estimate - u.low)) if math.isfinite(u.low) else 0.0 for u in uplifts],
                  [max(0.0, 100 * (u.high - u.estimate)) if math.isfinite(u.high) else 0.0 for u in uplifts]]
        ax.errorbar(xs, list(ys), xerr=errors, fmt="o", capsize=3)
        ax.axvline(0.0, color="grey", linewidth=0.8)
        ax.set_yticks(list(ys), names)
        ax.set_title(f"uplift in {_LABELS[metric]}, %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
