"""Policy search on a real event log: replay, estimates, and the runs it leaves in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.bandit import BanditConfig, shared_line
from engine.core import Engine, EngineConfig
from engine.eventlog import EventLog
from engine.export import export_jsonl, export_parquet
from engine.rewards import RewardRules
from engine.types import DecisionRequest, Item, RewardReport
from server.cli import main
from training.evaluate import LOGGING, UNIFORM, EvaluationConfig, evaluate
from training.replay import PolicyCandidate, load_joined, replay_fast, replay_python, slot_examples, write_vw_data
from training.tracking import default_tracking_uri, tracked_run, tracking_client

SEGMENTS = ("bargain", "premium", "sporty", "family")


def make_log(data_dir: Path, events: int = 500, n_items: int = 6, slots: int = 2, seed: int = 0,
             bandit: BanditConfig = BanditConfig()) -> np.ndarray:
    """Run the engine in-process on a storefront where each segment has a favourite item.

    Click probabilities are ``taste[segment, item]``: 0.8 for the segment's favourite, 0.05–0.3
    otherwise. Every shown slot gets its reward (1 or 0) through ``record_reward``. Fixed event ids
    and learning before each next decision make the log the same on every run.
    """
    rng = np.random.default_rng(seed)
    taste = rng.uniform(0.05, 0.3, (len(SEGMENTS), n_items))
    taste[np.arange(len(SEGMENTS)), rng.permutation(n_items)[: len(SEGMENTS)]] = 0.8
    engine = Engine(EngineConfig(data_dir=data_dir, bandit=bandit, seed=seed))
    try:
        engine.upsert_items([Item(f"item-{i}", {"category": f"c{i % 3}", "price": 10.0 + 5 * i}) for i in range(n_items)])
        for i in range(events):
            s = int(rng.integers(len(SEGMENTS)))
            decision = engine.decide(DecisionRequest(
                user_id=f"user-{i % 50}", user_features={"segment": SEGMENTS[s]},
                context={"channel": "web", "hour": "12", "weekday": "tue"}, num_results=slots,
                event_id=f"event-{i:05d}"))
            for slot in decision.slots:
                clicked = rng.random() < taste[s, int(slot.item_id.split("-")[1])]
                engine.record_reward(RewardReport(decision.event_id, float(clicked), slot.item_id, "click"))
            engine.wait_until_learned()  # learn before the next decision: the same log on every run
    finally:
        engine.close()
    return taste


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("log") / "data"
    make_log(data_dir)
    return data_dir


SMALL = EvaluationConfig(
    candidates=(PolicyCandidate(), PolicyCandidate(BanditConfig("epsilon", 1.0), "ips")),
    n_resamples=300,
)


def test_slot_examples_carry_the_servers_features_and_the_pmf_over_the_candidates_left(logged: Path) -> None:
    records = load_joined(logged)
    examples = slot_examples(records)
    assert len(records) == 500 and len(examples) == 1000
    first, second = examples[0], examples[1]
    assert first.shared == shared_line(records[0].decision.user_features, records[0].decision.context)
    assert (first.slot, second.slot) == (0, 1) and len(first.actions) == 6 and len(second.actions) == 5
    assert records[0].decision.slots[0].item_id not in " ".join(second.actions)
    for ex, slot in zip(examples[:2], records[0].decision.slots):
        assert f"id={slot.item_id} " in ex.actions[ex.chosen]
        assert ex.logging_pmf[ex.chosen] == slot.probability
        assert sum(ex.logging_pmf) == pytest.approx(1.0, abs=1e-6)


def test_vws_driver_replays_the_same_pmfs_as_the_servers_adapter_one_example_at_a_time(logged: Path, tmp_path: Path) -> None:
    examples = slot_examples(load_joined(logged))
    write_vw_data(examples, tmp_path / "data.txt")
    candidate = PolicyCandidate(BanditConfig("softmax"), "ips")
    fast = replay_fast(candidate, tmp_path / "data.txt", len(examples), tmp_path / "fast")
    slow = replay_python(candidate, examples, tmp_path / "slow")
    assert len(fast.pmfs) == len(slow.pmfs) == 1000
    assert max(float(np.abs(a - b).max()) for a, b in zip(fast.pmfs, slow.pmfs)) < 1e-5
    assert np.allclose(fast.pmfs[0], 1 / 6)  # nothing learned before the first example
    assert np.mean([p.max() for p in fast.pmfs[-200:]]) > 0.6  # and much learned by the end
    assert fast.model_path is not None and fast.model_path.stat().st_size > 1000
    assert np.isfinite(fast.replay_loss) and fast.replay_loss < 0


def test_estimates_of_the_logging_policy_uniform_random_and_the_candidates(logged: Path, tmp_path: Path) -> None:
    evaluation = evaluate(logged, SMALL, tmp_path)
    rewards = np.array([e.reward for e in slot_examples(load_joined(logged))])
    logging, uniform = evaluation.policy(LOGGING), evaluation.policy(UNIFORM)
    assert logging.overall["ips"].value == np.mean(rewards)
    assert logging.overall["ips"].ess == pytest.approx(1000)
    assert sorted(logging.per_slot) == [0, 1] and logging.per_slot[0]["ips"].n == 500
    # the learned policies clearly beat uniform random; epsilon 1.0 explores uniformly
    assert uniform.overall["dr"].value < logging.overall["dr"].ci_low - 0.05
    assert uniform.overall["dr"].ess < 0.2 * logging.overall["dr"].ess  # the log explores little
    squarecb, explorer = evaluation.candidates
    assert squarecb.overall["dr"].ci_low > explorer.overall["dr"].value + 0.05
    assert explorer.overall["ips"].value == pytest.approx(uniform.overall["ips"].value, abs=1e-4)
    assert evaluation.best is squarecb
    for p in evaluation.policies:
        for e in p.overall.values():
            assert e.ci_low <= e.value <= e.ci_high and e.n == 1000
    assert evaluation.throughput["examples_per_second_vw_driver"] > 0
    assert evaluation.throughput["examples_per_second_python_loop"] > 0
    assert evaluation.throughput["replay_max_pmf_difference"] < 1e-5


def test_an_exported_jsonl_or_parquet_log_gives_the_same_estimates(logged: Path, tmp_path: Path) -> None:
    log = EventLog(logged / "events.db", RewardRules())
    try:
        export_jsonl(log.reader, tmp_path / "events.jsonl")
        export_parquet(log.reader, tmp_path / "events.parquet")
    finally:
        log.close()
    config = EvaluationConfig(candidates=(PolicyCandidate(),), n_resamples=100, compare_python_replay=False)
    values = [evaluate(source, config, tmp_path / f"work-{source.suffix}").policy(PolicyCandidate().name).overall["snips"]
              for source in (logged, tmp_path / "events.jsonl", tmp_path / "events.parquet")]
    assert values[0] == values[1] == values[2]


def test_bad_configurations_and_sources_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^estimators: 'magic' is not one of"):
        evaluate(tmp_path, EvaluationConfig(estimators=("ips", "magic")))
    with pytest.raises(ValueError, match="^cb_type: squarecb needs mtr"):
        evaluate(tmp_path, EvaluationConfig(candidates=(PolicyCandidate(BanditConfig("squarecb"), "ips"),)))
    with pytest.raises(FileNotFoundError, match="no event log at"):
        evaluate(tmp_path / "nowhere", SMALL)


def test_the_default_tracking_store_is_a_sqlite_file_in_the_data_dir_unless_the_environment_says_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path / "d") == f"sqlite:///{tmp_path / 'd' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert default_tracking_uri(tmp_path / "d") == "http://mlflow.internal:5000"


def test_recbandit_evaluate_logs_a_parent_run_and_a_child_run_per_policy(logged: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps([c.to_dict() for c in SMALL.candidates]))
    assert main(["evaluate", "--data-dir", str(logged), "--tracking-uri", uri, "--candidates", str(candidates),
                 "--resamples", "200"]) == 0
    client = tracking_client(uri)
    experiment = client.get_experiment_by_name("recbandit-evaluate")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 1 + 4
    parent = parents[0]
    children = {r.data.tags["mlflow.runName"]: r for r in runs if r is not parent}
    assert set(children) == {LOGGING, UNIFORM, *(c.name for c in SMALL.candidates)}
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children.values())
    assert parent.data.params["primary_estimator"] == "dr" and parent.data.params["n_resamples"] == "200"
    assert json.loads(parent.data.params["candidates"])[1]["exploration"] == "epsilon"
    assert parent.data.tags["data.events"] == "500" and parent.data.tags["data.examples"] == "1000"
    assert parent.data.tags["data.first_ts"] <= parent.data.tags["data.last_ts"]
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40
    for run in runs:
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"]
        assert run.data.tags["mlflow.source.type"] == "LOCAL"
    assert parent.data.metrics["throughput/examples_per_second_vw_driver"] > 0
    assert parent.data.metrics["throughput/examples_per_second_python_loop"] > 0
    assert parent.data.metrics["best/dr/ci_low"] <= parent.data.metrics["best/dr/value"]
    assert parent.data.tags["best_policy"] == SMALL.candidates[0].name
    assert parent.data.tags["registered_version"] == "1"
    squarecb = children[SMALL.candidates[0].name]
    assert squarecb.data.params["exploration"] == "squarecb" and squarecb.data.params["cb_type"] == "mtr"
    assert squarecb.data.params["learning_rate"] == "0.5" and squarecb.data.params["interactions"] == '["UI", "CI", "PI"]'
    assert squarecb.data.params["exploration_parameter"] == "10.0"  # the default, as run; never "None"
    assert "None" not in json.dumps(json.loads(parent.data.params["candidates"]))
    assert json.loads(parent.data.params["candidates"])[0]["exploration_parameter"] == 10.0
    m = squarecb.data.metrics
    for key in ("ips", "snips", "dm", "dr", "sndr"):
        assert m[f"{key}/ci_low"] <= m[f"{key}/value"] <= m[f"{key}/ci_high"] and m[f"{key}/ess"] > 0
        assert {f"slot0/{key}/value", f"slot1/{key}/ci_low", f"slot1/{key}/ess"} <= set(m)
    assert not [name for name in m if "_value" in name or name.startswith("slot1_")]  # grouped, not flat
    assert m["replay/loss"] < 0 and m["replay/examples_per_second"] > 0
    assert squarecb.data.tags["policy_kind"] == "candidate" and children[LOGGING].data.tags["policy_kind"] == "baseline"
    parent_files = {f.path: f.file_size for f in client.list_artifacts(parent.info.run_id)}
    assert parent_files["candidates.png"] > 10_000 and "evaluation.json" in parent_files
    policy_files = {f.path for f in client.list_artifacts(squarecb.info.run_id, "policy")}
    assert {"policy/MLmodel", "policy/policy.json", "policy/artifacts"} <= policy_files
    (vw_file,) = client.list_artifacts(squarecb.info.run_id, "policy/artifacts")
    assert vw_file.path == "policy/artifacts/model.vw" and vw_file.file_size > 1000
    assert client.list_artifacts(children[LOGGING].info.run_id) == []


def test_a_trainer_logs_params_per_epoch_metrics_and_an_artifact(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "embeddings.npz").write_bytes(b"\0" * 100)
    with tracked_run(uri, "recbandit-embeddings", {"epochs": 3, "components": 16}, run_name="lightfm") as run:
        for epoch in range(3):
            run.log_metrics({"precision_at_10": 0.1 * (epoch + 1)}, step=epoch)
        run.log_artifact(tmp_path / "embeddings.npz", "model")
    client = tracking_client(uri)
    finished = client.get_run(run.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.params == {"epochs": "3", "components": "16"}
    history = client.get_metric_history(run.run_id, "precision_at_10")
    assert [(m.step, round(m.value, 3)) for m in history] == [(0, 0.1), (1, 0.2), (2, 0.3)]
    assert [f.path for f in client.list_artifacts(run.run_id, "model")] == ["model/embeddings.npz"]
    with pytest.raises(RuntimeError), tracked_run(uri, "recbandit-embeddings", {}) as failing:
        raise RuntimeError("diverged")
    assert client.get_run(failing.run_id).info.status == "FAILED"


def test_a_logging_policy_that_explores_less_leaves_less_to_evaluate_other_policies_with(tmp_path: Path) -> None:
    """Why the bandit's defaults explore as they do (README, "Learning quality"): the same world
    logged by squarecb with γ scale 10 and 100 leaves uniform random an effective sample size of
    about 80 and about 8 of the 1,000 slots."""
    uniform = PolicyCandidate(BanditConfig("epsilon", 1.0), "ips")
    ess = {}
    for gamma in (10.0, 100.0):
        make_log(tmp_path / f"gamma-{gamma:g}", events=500, bandit=BanditConfig("squarecb", gamma))
        evaluation = evaluate(tmp_path / f"gamma-{gamma:g}", EvaluationConfig(candidates=(uniform,), n_resamples=50))
        ess[gamma] = evaluation.best.overall["ips"].ess
    assert ess[10.0] > 60 and ess[100.0] < ess[10.0] / 5, ess
