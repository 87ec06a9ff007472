"""Import the Open Bandit Dataset sample into recbandit's event log.

The Open Bandit Dataset (ZOZOTOWN, CC BY 4.0) logs fashion recommendations shown in three slots
of a storefront page by two policies — uniform ``random`` and Bernoulli Thompson sampling
(``bts``) — in three campaigns (``all``, ``men``, ``women``). A 10,000-impression sample of every
(policy, campaign) pair ships inside the ``obp`` source package::

    obp-0.5.7/obp/dataset/obd/{random,bts}/{all,men,women}/{campaign}.csv
    obp-0.5.7/obp/dataset/obd/{random,bts}/{all,men,women}/item_context.csv

Each impression becomes one event of the log, written with the log's own record types:

* ``user_features``: ``user_feature_0..3`` (hashed categories); the data has no user identity, so
  ``user_id`` names the user-feature profile (``obd-`` and a digest of the four values);
* ``context``: ``position`` (``"1"``, ``"2"`` or ``"3"``, the slot on the page), ``campaign``, and
  the ``hour``/``weekday`` of the impression as the server adds them;
* ``candidates``: every item of the campaign (``{campaign}-{item_id}``) with ``item_feature_0``
  (a number) and ``item_feature_1..3`` (hashed categories), plus ``user_item_affinity`` where the
  row's ``user-item_affinity_{item_id}`` is non-zero;
* one slot: the shown item with ``propensity_score`` as its probability. The dataset gives only
  the shown item's probability; the rest of the pmf is spread evenly over the other candidates so
  that it sums to 1 (for ``random`` this is exactly the logging policy's uniform pmf);
* ``model_version``: ``obd-random`` or ``obd-bts``, the logging policy;
* the click as the reward labelled ``click`` (0 or 1), final at once, at the impression's time.

Event ids are ``obd-{policy}-{campaign}-{row}``, so importing again adds nothing. The hashed
categories are salted per file: the same item has the same ``item_feature_0`` under ``random``
and ``bts`` but different hashes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO

from engine.eventlog import EventLog
from engine.features import with_time_context
from engine.logreader import EVENT_LOG
from engine.records import LoggedDecision, Reward, SlotChoice
from engine.rewards import RewardRules
from engine.types import Candidate, FeatureValue

POLICIES = ("random", "bts")
CAMPAIGNS = ("all", "men", "women")
OBP_VERSION = "0.5.7"
SDIST_NAME = f"obp-{OBP_VERSION}.tar.gz"
SDIST_ROOT = f"obp-{OBP_VERSION}/obp/dataset/obd"
REWARD_LABEL = "click"
IMPRESSION_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
POSITIONS = ("1", "2", "3")

OpenMember = Callable[[str], AbstractContextManager[IO[str]]]
"""Opens ``{policy}/{campaign}/{file}.csv`` of the dataset as text."""


class OBDFormatError(ValueError):
    """A dataset file does not have the expected columns or values; the message says where."""


@dataclass(frozen=True, slots=True)
class CampaignSummary:
    """One (policy, campaign) file as imported: its on-policy click rate with a 95 % interval.

    ``click_rate`` is the mean click over the logged impressions, the value of the logging policy
    itself; ``ci_low``/``ci_high`` are the Wilson score interval.
    """

    policy: str
    campaign: str
    events: int
    new_events: int
    clicks: int
    click_rate: float
    ci_low: float
    ci_high: float
    items: int


# -- obtaining the files ------------------------------------------------------------------------


def download_sample(cache_dir: Path) -> Path:
    """The ``obp`` source package in ``cache_dir``, downloaded with pip unless already there."""
    sdist = cache_dir / SDIST_NAME
    if sdist.exists():
        return sdist
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", f"obp=={OBP_VERSION}", "--no-deps",
        "--no-binary", ":all:", "--ignore-requires-python", "-d", str(cache_dir),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0 or not sdist.exists():
        raise RuntimeError(f"pip download of obp=={OBP_VERSION} failed:\n{done.stderr.strip()[-2000:]}")
    return sdist


@contextmanager
def open_source(source: Path) -> Iterator[OpenMember]:
    """Open the dataset in the sdist ``source`` (``.tar.gz``) or an extracted folder.

    A folder may be the ``obd`` folder itself (holding ``random/`` and ``bts/``) or any folder
    above it in the sdist's layout, such as the extracted ``obp-0.5.7``.
    """
    if source.is_file():
        with tarfile.open(source, "r:gz") as archive:

            @contextmanager
            def member(relative: str) -> Iterator[IO[str]]:
                try:
                    raw = archive.extractfile(f"{SDIST_ROOT}/{relative}")
                except KeyError:
                    raise FileNotFoundError(f"{source}: no {SDIST_ROOT}/{relative}") from None
                if raw is None:
                    raise FileNotFoundError(f"{source}: {SDIST_ROOT}/{relative} is not a file")
                with io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
                    yield text

            yield member
        return
    root = _dataset_folder(source)

    def file(relative: str) -> AbstractContextManager[IO[str]]:
        return open(root / relative, encoding="utf-8", newline="")

    yield file


def _dataset_folder(source: Path) -> Path:
    parts = SDIST_ROOT.split("/")
    for depth in range(len(parts) + 1):
        candidate = source.joinpath(*parts[depth:])
        if (candidate / "random").is_dir() or (candidate / "bts").is_dir():
            return candidate
    raise FileNotFoundError(f"--source {source}: no Open Bandit Dataset folder (random/, bts/) found")


# -- reading and checking the CSVs --------------------------------------------------------------


def read_items(stream: IO[str], where: str) -> dict[str, dict[str, FeatureValue]]:
    """``item_context.csv``: item id → its features; a column whose every value is a number is
    numeric (``item_feature_0``), any other is categorical text (the hashed ``item_feature_1..3``)."""
    reader = csv.DictReader(stream)
    columns = reader.fieldnames or []
    _require_columns(where, columns, ("item_id",))
    feature_columns = [c for c in columns if c.startswith("item_feature_")]
    if not feature_columns:
        raise OBDFormatError(f"{where}: no item_feature_* column")
    rows = {
        _text(row, "item_id", where, line): {c: _text(row, c, where, line) for c in feature_columns}
        for line, row in enumerate(reader, start=2)
    }
    if not rows:
        raise OBDFormatError(f"{where}: no items")
    numeric = [c for c in feature_columns if all(_is_number(r[c]) for r in rows.values())]
    return {
        item_id: {c: float(v) if c in numeric else v for c, v in features.items()}
        for item_id, features in rows.items()
    }


@dataclass(frozen=True, slots=True)
class Impression:
    """One checked row of a campaign CSV."""

    row: str
    ts: float
    item_id: str
    position: str
    click: int
    propensity: float
    user_features: dict[str, FeatureValue]
    affinity: dict[str, float]


def read_impressions(stream: IO[str], where: str, item_ids: Sequence[str]) -> Iterator[Impression]:
    """The rows of ``{campaign}.csv``, checked; errors name the file, line and column."""
    reader = csv.DictReader(stream)
    columns = reader.fieldnames or []
    _require_columns(where, columns, IMPRESSION_COLUMNS)
    user_columns = [c for c in columns if c.startswith("user_feature_")]
    if not user_columns:
        raise OBDFormatError(f"{where}: no user_feature_* column")
    affinity_columns = {c.removeprefix("user-item_affinity_"): c for c in columns if c.startswith("user-item_affinity_")}
    known = set(item_ids)
    for line, row in enumerate(reader, start=2):
        yield _impression(row, line, where, known, user_columns, affinity_columns)


def _impression(row, line, where, known, user_columns, affinity_columns) -> Impression:  # type: ignore[no-untyped-def]
    item_id = _text(row, "item_id", where, line)
    if item_id not in known:
        raise OBDFormatError(f"{where} line {line}: column 'item_id' is {item_id!r}, not in item_context.csv")
    position = _text(row, "position", where, line)
    if position not in POSITIONS:
        raise OBDFormatError(f"{where} line {line}: column 'position' must be 1, 2 or 3, got {position!r}")
    click = _number(row, "click", where, line)
    if click not in (0.0, 1.0):
        raise OBDFormatError(f"{where} line {line}: column 'click' must be 0 or 1, got {row['click']!r}")
    propensity = _number(row, "propensity_score", where, line)
    if not 0.0 < propensity <= 1.0:
        raise OBDFormatError(f"{where} line {line}: column 'propensity_score' must be in (0, 1], got {propensity}")
    stamp = _text(row, "timestamp", where, line)
    try:
        ts = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        raise OBDFormatError(f"{where} line {line}: column 'timestamp' is not a date and time: {stamp!r}") from None
    affinity = {}
    for item, column in affinity_columns.items():
        value = _number(row, column, where, line)
        if value:
            affinity[item] = value
    return Impression(
        row=row.get("") or str(line - 2),
        ts=ts,
        item_id=item_id,
        position=position,
        click=int(click),
        propensity=propensity,
        user_features={c: _text(row, c, where, line) for c in user_columns},
        affinity=affinity,
    )


def _require_columns(where: str, columns: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise OBDFormatError(f"{where}: missing column {', '.join(repr(c) for c in missing)}")


def _text(row: dict[str, str], column: str, where: str, line: int) -> str:
    value = (row.get(column) or "").strip()
    if not value:
        raise OBDFormatError(f"{where} line {line}: column {column!r} is empty")
    return value


def _number(row: dict[str, str], column: str, where: str, line: int) -> float:
    text = _text(row, column, where, line)
    try:
        value = float(text)
    except ValueError:
        raise OBDFormatError(f"{where} line {line}: column {column!r} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise OBDFormatError(f"{where} line {line}: column {column!r} must be finite, got {text!r}")
    return value


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# -- converting and importing -------------------------------------------------------------------


def event_id(policy: str, campaign: str, row: str) -> str:
    return f"obd-{policy}-{campaign}-{row}"


def to_event(
    impression: Impression, policy: str, campaign: str, items: dict[str, dict[str, FeatureValue]]
) -> tuple[LoggedDecision, Reward]:
    """The logged decision and final click of one impression (see the module docstring)."""
    candidates = tuple(
        Candidate(
            f"{campaign}-{item}",
            {**features, "user_item_affinity": impression.affinity[item]} if item in impression.affinity else features,
        )
        for item, features in items.items()
    )
    shown = list(items).index(impression.item_id)
    others = (1.0 - impression.propensity) / (len(items) - 1) if len(items) > 1 else 0.0
    pmf = tuple(impression.propensity if i == shown else others for i in range(len(items)))
    profile = "\x1f".join(str(v) for v in impression.user_features.values())
    decision = LoggedDecision(
        event_id=event_id(policy, campaign, impression.row),
        ts=impression.ts,
        user_id="obd-" + hashlib.sha1(profile.encode()).hexdigest()[:12],
        user_features=impression.user_features,
        context=with_time_context({"position": impression.position, "campaign": campaign}, impression.ts),
        candidates=candidates,
        slots=(SlotChoice(candidates[shown].item_id, impression.propensity, pmf),),
        model_version=f"obd-{policy}",
        deferred=False,
        deadline=impression.ts,
    )
    reward = Reward(decision.event_id, candidates[shown].item_id, REWARD_LABEL, float(impression.click), impression.ts)
    return decision, reward


def import_campaign(
    log: EventLog, open_member: OpenMember, policy: str, campaign: str, *, progress: bool = False
) -> CampaignSummary:
    """Log every impression of one (policy, campaign) file with its click as the final reward.

    ``progress`` counts the impressions on stderr when stderr is a terminal.
    """
    from tqdm import tqdm

    folder = f"{policy}/{campaign}"
    with open_member(f"{folder}/item_context.csv") as stream:
        items = read_items(stream, f"{folder}/item_context.csv")
    where = f"{folder}/{campaign}.csv"
    events = new_events = clicks = 0
    with open_member(where) as stream, tqdm(desc=f"import {policy}/{campaign}", unit="event", file=sys.stderr,
                                           disable=not (progress and sys.stderr.isatty())) as bar:
        for impression in read_impressions(stream, where, list(items)):
            bar.update()
            decision, reward = to_event(impression, policy, campaign, items)
            if log.append_decision(decision) is decision:
                new_events += 1
            log.append_reward(reward)
            events += 1
            clicks += impression.click
    if not events:
        raise OBDFormatError(f"{where}: no impressions")
    low, high = wilson_interval(clicks, events)
    return CampaignSummary(policy, campaign, events, new_events, clicks, clicks / events, low, high, len(items))


def import_obd(
    log: EventLog,
    source: Path,
    *,
    policies: Sequence[str] = POLICIES,
    campaigns: Sequence[str] = CAMPAIGNS,
    progress: bool = False,
) -> list[CampaignSummary]:
    """Import the chosen (policy, campaign) files from ``source`` (the sdist or a folder)."""
    for name, chosen, allowed in (("policies", policies, POLICIES), ("campaigns", campaigns, CAMPAIGNS)):
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise ValueError(f"{name}: must be some of {', '.join(allowed)}, got {', '.join(chosen) or 'none'}")
    with open_source(source) as open_member:
        return [import_campaign(log, open_member, p, c, progress=progress) for p in policies for c in campaigns]


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    r"""The Wilson score interval for a binomial rate (95 % for the default ``z``).

    .. math:: \frac{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}

    Unlike the normal interval it stays inside [0, 1] and is not empty when no click was logged.
    """
    if trials <= 0:
        raise ValueError(f"trials: must be positive, got {trials}")
    rate = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def format_summary(summaries: Sequence[CampaignSummary]) -> str:
    lines = [f"{'policy':<8} {'campaign':<8} {'events':>7} {'new':>7} {'clicks':>6} {'items':>5}  click rate (95% CI)"]
    for s in summaries:
        lines.append(
            f"{s.policy:<8} {s.campaign:<8} {s.events:>7} {s.new_events:>7} {s.clicks:>6} {s.items:>5}  "
            f"{s.click_rate:.4f} [{s.ci_low:.4f}, {s.ci_high:.4f}]"
        )
    return "\n".join(lines)


def run_import(
    data_dir: Path,
    *,
    source: Path | None = None,
    cache_dir: Path | None = None,
    policies: Sequence[str] = POLICIES,
    campaigns: Sequence[str] = CAMPAIGNS,
    progress: bool = True,
) -> list[CampaignSummary]:
    """``recbandit import-obd``: obtain the sample unless ``source`` is given, import, print the summary.

    A bar per file on stderr while importing, when stderr is a terminal and ``progress`` is on.
    """
    data_dir = Path(data_dir)
    if source is None:
        source = download_sample(cache_dir or data_dir / "cache")
    elif not source.exists():
        raise FileNotFoundError(f"--source {source}: no such file or folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(data_dir / EVENT_LOG, RewardRules())
    try:
        summaries = import_obd(log, source, policies=policies, campaigns=campaigns, progress=progress)
    finally:
        log.close()
    print(format_summary(summaries))
    print(f"event log: {data_dir / 'events.db'}")
    return summaries
