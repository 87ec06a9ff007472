"""``recbandit evaluate``: replay candidate policies on the event log and estimate their values.

Each candidate VW configuration is replayed with progressive validation by VW's own driver
(:mod:`training.replay`); its pmf before each example gives the target probabilities. Every
candidate, the logging policy (the pmfs the server logged) and uniform random are estimated with
every estimator of :mod:`engine.ope`, over all slots and per slot, with seeded bootstrap
intervals. DM and DR use a cross-fitted, calibrated reward model (:mod:`training.reward_model`).
The first candidate is also replayed through the server's adapter one example at a time, to
report both throughputs on the same data.

The replay writes its data file, reward models and predictions to a working directory; unless the
caller passes one (and then owns it), it is a temporary directory removed before :func:`evaluate`
returns.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from engine.bandit import BanditConfig
from engine.ope import ESTIMATORS, BanditFeedback, Bootstrap, Estimate
from engine.logreader import event_log_path
from training.lineage import digest_file
from training.replay import (
    PolicyCandidate,
    ReplayResult,
    SlotExample,
    load_joined,
    replay_fast,
    replay_python,
    slot_examples,
    write_vw_data,
)
from training.reward_model import reward_predictions

LOGGING, UNIFORM = "logging", "uniform-random"

DEFAULT_CANDIDATES: tuple[PolicyCandidate, ...] = (
    PolicyCandidate(BanditConfig("squarecb"), "mtr"),
    PolicyCandidate(BanditConfig("squarecb", learning_rate=1.0), "mtr"),
    PolicyCandidate(BanditConfig("squarecb", interactions=("UI", "CI", "PI", "UC")), "mtr"),
    PolicyCandidate(BanditConfig("epsilon"), "ips"),
    PolicyCandidate(BanditConfig("epsilon"), "dr"),
    PolicyCandidate(BanditConfig("epsilon", 0.1, learning_rate=0.1), "mtr"),
    PolicyCandidate(BanditConfig("softmax"), "ips"),
    PolicyCandidate(BanditConfig("bag"), "dr"),
)


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything an evaluation depends on; logged whole as the MLflow run's params."""

    candidates: tuple[PolicyCandidate, ...] = DEFAULT_CANDIDATES
    estimators: tuple[str, ...] = tuple(ESTIMATORS)
    primary_estimator: str = "dr"
    clip: float | None = None
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0
    reward_model_folds: int = 2
    compare_python_replay: bool = True

    def validate(self) -> None:
        if not self.candidates:
            raise ValueError("candidates: at least one policy to replay")
        for name in (*self.estimators, self.primary_estimator):
            if name not in ESTIMATORS:
                raise ValueError(f"estimators: {name!r} is not one of {', '.join(ESTIMATORS)}")
        if self.primary_estimator not in self.estimators:
            raise ValueError(f"primary_estimator: {self.primary_estimator!r} is not among the estimators")
        if self.reward_model_folds < 2:
            raise ValueError(f"reward_model_folds: must be at least 2, got {self.reward_model_folds}")
        for candidate in self.candidates:
            candidate.vw_arguments()

    @property
    def bootstrap(self) -> Bootstrap:
        return Bootstrap(self.n_resamples, self.confidence, self.seed)


@dataclass(frozen=True)
class DataSummary:
    """The slot examples evaluated: from how many decisions, when, their digest and mean reward.

    ``observed_value`` is the mean logged reward per slot: the logging policy's value as observed.
    ``digest`` hashes the labelled examples exactly as replayed (see :mod:`training.lineage`).
    """

    source: str
    events: int
    examples: int
    slots: int
    first_ts: float
    last_ts: float
    digest: str = ""
    observed_value: float = float("nan")


@dataclass
class PolicyEvaluation:
    """One policy's estimates: ``overall[estimator]`` over every slot, ``per_slot[slot][estimator]``."""

    name: str
    candidate: PolicyCandidate | None
    overall: dict[str, Estimate]
    per_slot: dict[int, dict[str, Estimate]]
    replay: ReplayResult | None = None
    started: float | None = None
    finished: float | None = None


@dataclass
class Evaluation:
    data: DataSummary
    config: EvaluationConfig
    policies: list[PolicyEvaluation]
    throughput: dict[str, float] = field(default_factory=dict)

    @property
    def candidates(self) -> list[PolicyEvaluation]:
        return [p for p in self.policies if p.candidate is not None]

    @property
    def best(self) -> PolicyEvaluation:
        """The candidate whose interval by the primary estimator has the highest lower bound.

        Ranking by the lower bound rather than the value keeps a lucky, high-variance candidate
        (few examples where it agrees with the log) from winning on noise.
        """
        key = self.config.primary_estimator
        return max(self.candidates, key=lambda p: (p.overall[key].ci_low, p.overall[key].value))

    @property
    def separated(self) -> bool:
        """Whether the best candidate's interval clears at least one other candidate's interval.

        ``False`` when every other candidate's interval overlaps the best's: the log cannot tell
        the candidates apart, and "best" only means "highest lower bound".
        """
        key, best = self.config.primary_estimator, self.best
        others = [p for p in self.candidates if p is not best]
        return not others or any(best.overall[key].ci_low > p.overall[key].ci_high for p in others)

    def policy(self, name: str) -> PolicyEvaluation:
        return next(p for p in self.policies if p.name == name)


class LoggedData:
    """The log as slot examples plus the arrays every policy's estimate shares."""

    def __init__(self, source: str | Path, workdir: Path, folds: int) -> None:
        records = load_joined(source)
        self.examples: list[SlotExample] = slot_examples(records)
        if not self.examples:
            raise ValueError(f"source: {source} holds no slot with a final reward to evaluate on")
        examples = self.examples
        self.data_path = workdir / "examples.txt"
        write_vw_data(examples, self.data_path)
        self.summary = DataSummary(
            str(source), len({e.event_id for e in examples}), len(examples), 1 + max(e.slot for e in examples),
            min(e.ts for e in examples), max(e.ts for e in examples), digest_file(self.data_path),
            float(np.mean([e.reward for e in examples])),
        )
        self.width = max(len(e.actions) for e in examples)
        self.reward = np.array([e.reward for e in examples])
        self.propensity = np.array([e.probability for e in examples])
        self.action = np.array([e.chosen for e in examples])
        self.slot = np.array([e.slot for e in examples])
        low, high = self.reward.min(), self.reward.max()
        q = [np.clip(p, low, high) for p in reward_predictions(examples, workdir / "reward-model", folds)]
        self.reward_prediction = self.padded(q)

    def padded(self, rows: list[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(rows), self.width))
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out

    def feedback(self, pmfs: list[np.ndarray]) -> BanditFeedback:
        return BanditFeedback(
            reward=self.reward, propensity=self.propensity, action=self.action,
            target_pmf=self.padded(pmfs), reward_prediction=self.reward_prediction, slot=self.slot,
        )


def evaluate(
    source: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    workdir: Path | None = None,
    *,
    progress: bool = False,
) -> Evaluation:
    """Replay every candidate on the log at ``source`` and estimate it, the logging policy and uniform random.

    With no ``workdir`` the replay works in a temporary directory that is removed on return, and
    the replays' ``model_path`` is ``None``; pass a ``workdir`` to keep the replayed models.
    ``progress`` shows a bar on stderr when stderr is a terminal.
    """
    config.validate()
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="recbandit-evaluate-") as tmp:
            evaluation = _evaluate(source, config, Path(tmp), progress)
        for p in evaluation.policies:
            if p.replay is not None:
                p.replay = replace(p.replay, model_path=None)
        return evaluation
    workdir.mkdir(parents=True, exist_ok=True)
    return _evaluate(source, config, workdir, progress)


def _evaluate(source: str | Path, config: EvaluationConfig, workdir: Path, progress: bool) -> Evaluation:
    from tqdm import tqdm

    began = time.time()
    data = LoggedData(source, workdir, config.reward_model_folds)
    policies = [
        estimate_policy(LOGGING, None, data, [np.asarray(e.logging_pmf) for e in data.examples], config),
        estimate_policy(UNIFORM, None, data, [np.full(len(e.actions), 1 / len(e.actions)) for e in data.examples], config),
    ]
    policies[0].started = began
    throughput: dict[str, float] = {}
    bar = tqdm(config.candidates, desc="replaying candidates", unit="policy", file=sys.stderr,
               disable=not (progress and sys.stderr.isatty()))
    for i, candidate in enumerate(bar):
        bar.set_postfix_str(candidate.name)
        started = time.time()
        replay = replay_fast(candidate, data.data_path, len(data.examples), workdir / f"candidate-{i}")
        policies.append(estimate_policy(candidate.name, candidate, data, replay.pmfs, config, replay, started))
        if i == 0:
            throughput["examples_per_second_vw_driver"] = replay.examples_per_second
            if config.compare_python_replay:
                python = replay_python(candidate, data.examples, workdir / "python-replay")
                throughput["examples_per_second_python_loop"] = python.examples_per_second
                throughput["replay_max_pmf_difference"] = max(
                    float(np.abs(a - b).max()) for a, b in zip(replay.pmfs, python.pmfs, strict=True)
                )
    bar.close()
    return Evaluation(data.summary, config, policies, throughput)


def estimate_policy(
    name: str,
    candidate: PolicyCandidate | None,
    data: LoggedData,
    pmfs: list[np.ndarray],
    config: EvaluationConfig,
    replay: ReplayResult | None = None,
    started: float | None = None,
) -> PolicyEvaluation:
    started = time.time() if started is None else started
    feedback = data.feedback(pmfs)
    estimators = {key: _estimator(key, config) for key in config.estimators}
    overall = {key: e.estimate(feedback, config.bootstrap) for key, e in estimators.items()}
    per_slot: dict[int, dict[str, Estimate]] = {}
    if data.summary.slots > 1:
        for slot in np.unique(feedback.slot):  # type: ignore[arg-type]
            part = feedback.subset(feedback.slot == slot)
            per_slot[int(slot)] = {key: e.estimate(part, config.bootstrap) for key, e in estimators.items()}
    return PolicyEvaluation(name, candidate, overall, per_slot, replay, started, time.time())


def _estimator(key: str, config: EvaluationConfig):  # type: ignore[no-untyped-def]
    cls = ESTIMATORS[key]
    return cls() if key == "dm" else cls(clip=config.clip)  # type: ignore[call-arg]


def format_table(evaluation: Evaluation) -> str:
    """A text table: one row per policy, value [interval] per estimator."""
    keys = evaluation.config.estimators
    header = f"| {'policy':<44} | " + " | ".join(f"{k:^21}" for k in keys) + " |"
    lines = [header, "|-" + "-" * 44 + "-|" + "|".join("-" * 23 for _ in keys) + "|"]
    for p in evaluation.policies:
        cells = [f"{p.overall[k].value:6.3f} [{p.overall[k].ci_low:5.3f},{p.overall[k].ci_high:5.3f}]" for k in keys]
        lines.append(f"| {p.name:<44} | " + " | ".join(f"{c:^21}" for c in cells) + " |")
    return "\n".join(lines)


# -- the command line -----------------------------------------------------------------------------


def config_from_arguments(args: SimpleNamespace) -> EvaluationConfig:
    candidates = DEFAULT_CANDIDATES
    if args.candidates is not None:
        candidates = tuple(PolicyCandidate.from_dict(c) for c in json.loads(args.candidates.read_text()))
    return EvaluationConfig(candidates=candidates, primary_estimator=args.estimator, clip=args.clip,
                            n_resamples=args.resamples, seed=args.seed)


def run(args: SimpleNamespace) -> int:
    """``recbandit evaluate``: evaluate, print the table and throughput, track, register, promote."""
    from training.registry import RegistrationFloor, evaluate_and_register
    from training.tracking import default_tracking_uri, tracked_evaluation

    config = config_from_arguments(args)
    began = time.perf_counter()
    source = args.log or args.data_dir
    event_log_path(source)  # no log: refuse before the tracking store (and its folder) is created
    uri = args.tracking_uri or default_tracking_uri(args.data_dir)
    progress = not args.no_progress
    if args.no_register:
        evaluation, _ = tracked_evaluation(source, config, uri, progress=progress)
    else:
        floor = RegistrationFloor(args.min_decisions, args.min_ess)
        evaluation, version, promotion = evaluate_and_register(source, config, uri, floor=floor, progress=progress)
    print(format_table(evaluation))
    t = evaluation.throughput
    decisions = f"{evaluation.data.events:,} decision{'s' if evaluation.data.events != 1 else ''}"
    print(f"\n{evaluation.data.examples:,} slot examples from {decisions} · replay "
          f"{t.get('examples_per_second_vw_driver', 0):,.0f} examples/s by VW's driver, "
          f"{t.get('examples_per_second_python_loop', 0):,.0f} examples/s one example at a time from Python"
          + (f" ({t['examples_per_second_vw_driver'] / t['examples_per_second_python_loop']:.1f}×)"
             if t.get("examples_per_second_python_loop") else ""))
    print(best_line(evaluation))
    if not args.no_register:
        if version is None:
            print(promotion.reason)
        else:
            print(f"registered recbandit-policy version {version}; "
                  f"{'champion' if promotion.promoted else 'not promoted'}: {promotion.reason}")
    print(f"tracking    {uri} · {time.perf_counter() - began:.0f} s in all")
    return 0


def best_line(evaluation: Evaluation) -> str:
    """Which candidate is best, said as confidently as the intervals allow."""
    key, best = evaluation.config.primary_estimator, evaluation.best
    if evaluation.separated:
        return f"best by the {key.upper()} lower bound: {best.name}"
    return (f"no candidate is separated: every candidate's {key.upper()} interval overlaps the best's, so the log "
            f"cannot tell them apart ({best.name} has the highest lower bound, "
            f"{best.overall[key].ci_low:.4f}, with interval [{best.overall[key].ci_low:.4f}, {best.overall[key].ci_high:.4f}])")
