"""Replay VW policies on the joined event log with progressive validation.

The log is turned into one bandit example per filled slot with a final reward, in decision
order: the server's own ``shared`` and ``Item`` lines (from :mod:`engine.bandit`) over the
candidates left for that slot, the logged item, its reward and its probability. A candidate
policy is replayed by predicting its pmf for each example *before* learning that example's
logged (action, cost = −reward, probability), so every pmf is out of sample.

Two drivers give the same pmfs: VW's own parser and driver reading a data file written once
(``Workspace("... -d data.txt -p predictions.txt"); run_parser()``, the fast path), and the
server's adapter :class:`engine.bandit.VWBandit` called once per example from Python.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from engine.bandit import BanditConfig, VWBandit, decision_lines, labelled_lines
from engine.logreader import LogReader, event_log_path
from engine.records import JoinedEvent
from engine.storage import is_postgres

CB_TYPES = ("ips", "dr", "mtr")


@dataclass(frozen=True, slots=True)
class SlotExample:
    """One filled slot of one logged decision, as the bandit saw it and learned it."""

    event_id: str
    ts: float
    slot: int
    shared: str
    actions: tuple[str, ...]
    chosen: int
    reward: float
    probability: float
    logging_pmf: tuple[float, ...]

    def labelled_lines(self) -> list[str]:
        """The example VW learns, labelled as the server labels it."""
        return labelled_lines(self.shared, self.actions, self.chosen, self.reward, self.probability)


@dataclass(frozen=True, slots=True)
class PolicyCandidate:
    """A policy to replay: the server's :class:`BanditConfig` plus VW's ``--cb_type``."""

    bandit: BanditConfig = field(default_factory=BanditConfig)
    cb_type: str = "mtr"

    @property
    def name(self) -> str:
        b = self.bandit
        return (f"{b.exploration}({b.parameter:g})-{self.cb_type}-q{'.'.join(b.interactions) or 'none'}"
                f"-lr{b.learning_rate:g}")

    def vw_arguments(self) -> str:
        if self.cb_type not in CB_TYPES:
            raise ValueError(f"cb_type: must be one of {', '.join(CB_TYPES)}, got {self.cb_type!r}")
        if self.bandit.exploration in ("squarecb", "regcbopt") and self.cb_type != "mtr":
            raise ValueError(f"cb_type: {self.bandit.exploration} needs mtr, got {self.cb_type!r}")
        return f"{self.bandit.vw_arguments()} --cb_type {self.cb_type}"

    def to_dict(self) -> dict[str, object]:
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.bandit).items()}
        return {**values, "cb_type": self.cb_type}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PolicyCandidate:
        """The inverse of :meth:`to_dict` after a JSON round trip (lists back to tuples)."""
        bandit = BanditConfig.from_dict({k: v for k, v in data.items() if k != "cb_type"})
        return cls(bandit, str(data.get("cb_type", "mtr")))


@dataclass(frozen=True)
class ReplayResult:
    """A candidate's pmf for every example (before learning it), its replay loss and model.

    ``replay_loss`` is VW's own progressive validation loss: the average estimated cost of the
    pmfs it predicted before learning each example (lower is better).
    """

    candidate: PolicyCandidate
    pmfs: list[np.ndarray]
    replay_loss: float
    examples_per_second: float
    model_path: Path | None


# -- reading the log ------------------------------------------------------------------------------


def load_joined(source: str | Path) -> list[JoinedEvent]:
    """Joined events from a data directory, its ``events.db`` or a ``postgresql://`` store, or from an
    exported ``.jsonl`` or ``.parquet`` file."""
    if is_postgres(source):
        with LogReader.open(source) as reader:
            return list(reader.history())
    path = event_log_path(source)
    if path.suffix == ".jsonl":
        with open(path) as lines:
            return [JoinedEvent.from_export(json.loads(line)) for line in lines if line.strip()]
    if path.suffix == ".parquet":
        return _events_from_parquet(path)
    with LogReader.open(path) as reader:
        return list(reader.history())


def _events_from_parquet(path: Path) -> list[JoinedEvent]:
    """Regroup the Parquet export's slot rows into joined events (rows keep decision order)."""
    import pyarrow.parquet as pq

    records: dict[str, dict[str, object]] = {}
    for row in pq.read_table(path).to_pylist():
        record = records.get(row["event_id"])
        if record is None:
            record = records[row["event_id"]] = {
                **row, "user_features": json.loads(row["user_features"]), "context": json.loads(row["context"]),
                "candidates": json.loads(row["candidates"]), "slots": [],
                "portrait": json.loads(row.get("portrait") or "{}"),
            }
        record["slots"].append(row)  # type: ignore[attr-defined]
    return sorted((JoinedEvent.from_export(r) for r in records.values()), key=lambda e: (e.ts, e.event_id))


def slot_examples(events: Iterable[JoinedEvent]) -> list[SlotExample]:
    """One example per slot with a final reward, in decision order, as the engine learns it."""
    examples = []
    for event in sorted(events, key=lambda e: e.ts):
        decision = event.decision
        shared, lines = decision_lines(decision)
        ids = [c.item_id for c in decision.candidates]
        remaining = list(range(len(ids)))
        for number, (slot, outcome) in enumerate(zip(decision.slots, event.outcomes, strict=True)):
            chosen = remaining.index(ids.index(slot.item_id))
            if outcome is not None:
                examples.append(SlotExample(
                    event_id=decision.event_id, ts=decision.ts, slot=number,
                    shared=shared, actions=tuple(lines[i] for i in remaining), chosen=chosen,
                    reward=outcome.reward, probability=slot.probability,
                    logging_pmf=tuple(slot.pmf[i] for i in remaining),
                ))
            remaining.pop(chosen)
    return examples


def write_vw_data(examples: Iterable[SlotExample], path: Path) -> int:
    """Write labelled multi-line examples separated by blank lines, VW's text format for ADF."""
    count = 0
    with open(path, "w") as out:
        for example in examples:
            out.write("\n".join(example.labelled_lines()))
            out.write("\n\n")
            count += 1
    return count


# -- replaying a policy -----------------------------------------------------------------------------


def replay_fast(candidate: PolicyCandidate, data_path: Path, n_examples: int, workdir: Path) -> ReplayResult:
    """Progressive validation by VW's own driver over ``data_path``; pmfs read from ``-p``."""
    import vowpalwabbit

    workdir.mkdir(parents=True, exist_ok=True)
    predictions, model = workdir / "predictions.txt", workdir / "model.vw"
    start = time.perf_counter()
    vw = vowpalwabbit.Workspace(f"{candidate.vw_arguments()} -d {data_path} -p {predictions} -f {model}")
    vw.run_parser()
    loss = vw.get_sum_loss() / max(vw.get_weighted_examples(), 1.0)
    vw.finish()
    elapsed = time.perf_counter() - start
    pmfs = [_normalised(scores) for scores in read_action_scores(predictions)]
    predictions.unlink()  # read once; on a large log it is the biggest file of the working directory
    if len(pmfs) != n_examples:
        raise RuntimeError(f"VW predicted {len(pmfs)} examples of {n_examples} in {data_path}")
    return ReplayResult(candidate, pmfs, float(loss), n_examples / elapsed, model)


def replay_python(candidate: PolicyCandidate, examples: Sequence[SlotExample], workdir: Path) -> ReplayResult:
    """The same replay through the server's adapter, one ``pmf`` and one ``learn`` call per example.

    The adapter starts from an untrained model written with the candidate's arguments, so it
    runs with the candidate's ``--cb_type``. ``replay_loss`` is not measured here (NaN).
    """
    import vowpalwabbit

    workdir.mkdir(parents=True, exist_ok=True)
    untrained = workdir / "untrained.vw"
    vw = vowpalwabbit.Workspace(candidate.vw_arguments())
    vw.save(str(untrained))
    vw.finish()
    bandit = VWBandit(candidate.bandit, model_path=str(untrained))
    start = time.perf_counter()
    pmfs = []
    for ex in examples:
        pmfs.append(np.asarray(bandit.pmf(ex.shared, ex.actions)))
        bandit.learn(ex.shared, ex.actions, ex.chosen, ex.reward, ex.probability)
    elapsed = time.perf_counter() - start
    bandit.close()
    return ReplayResult(candidate, pmfs, float("nan"), len(examples) / elapsed, None)


def read_action_scores(path: Path) -> Iterator[dict[int, float]]:
    """Parse VW's ``-p`` output for ADF reductions: ``index:score,index:score`` per example."""
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if line:
                yield {int(i): float(s) for i, s in (pair.split(":") for pair in line.split(","))}


def _normalised(scores: dict[int, float]) -> np.ndarray:
    pmf = np.array([scores[i] for i in range(len(scores))])
    total = pmf.sum()
    return pmf / total if total > 0 else np.full(len(pmf), 1.0 / len(pmf))
