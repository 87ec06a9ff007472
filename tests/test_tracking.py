"""What an evaluation leaves in MLflow: lineage, run times, the policy as a model, the plot, the floor."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from engine.bandit import decision_lines
from server.cli import main
from tests.test_evaluate import make_log
from tests.test_registry import EXPLORER, LEARNER
from training.evaluate import LOGGING, EvaluationConfig, evaluate
from training.plots import candidate_order
from training.registry import MODEL_NAME, RegistrationFloor, download_policy, evaluate_and_register
from training.replay import load_joined, slot_examples
from training.tracking import EVALUATION_EXPERIMENT, tracked_evaluation, tracking_client
from tests.conftest import exported

CONFIG = EvaluationConfig(candidates=(LEARNER, EXPLORER), n_resamples=100, compare_python_replay=False)


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("tracking") / "data"
    make_log(data_dir, events=300, seed=1)
    return data_dir


def _runs(uri: str):  # type: ignore[no-untyped-def]
    client = tracking_client(uri)
    runs = client.search_runs([client.get_experiment_by_name(EVALUATION_EXPERIMENT).experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return client, parent, {r.data.tags["mlflow.runName"]: r for r in runs if r is not parent}


def test_every_evaluation_run_names_its_data_rows_time_range_and_digest(logged: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluation, logged_runs = tracked_evaluation(logged, CONFIG, uri)
    examples = slot_examples(load_joined(logged))
    _, parent, children = _runs(uri)
    assert len(children) == 4
    for run in (parent, *children.values()):
        (dataset_input,) = run.inputs.dataset_inputs
        dataset = dataset_input.dataset
        profile = json.loads(dataset.profile)
        assert json.loads(dataset.source) == {"uri": str((logged / "events.db").resolve())}
        assert dataset.name == "events.db" and dataset.source_type == "local"
        assert profile["rows"] == len(examples) == 600 and profile["decisions"] == 300
        assert profile["first_ts"] == min(e.ts for e in examples) and profile["last_ts"] == max(e.ts for e in examples)
        assert profile["first_time"] < profile["last_time"]
        assert dataset.digest == evaluation.data.digest and len(dataset.digest) == 16
        assert [(t.key, t.value) for t in dataset_input.tags] == [("mlflow.data.context", "evaluation")]
    other = tmp_path / "other"
    make_log(other, events=300, seed=2)
    assert evaluate(other, CONFIG).data.digest != evaluation.data.digest  # other rows, another digest


def test_the_parent_run_covers_the_replay_and_each_child_its_own_policy(logged: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluation, _ = tracked_evaluation(logged, CONFIG, uri)
    _, parent, children = _runs(uri)
    spans = [(r.info.start_time, r.info.end_time) for r in children.values()]
    assert all(parent.info.start_time <= start < end <= parent.info.end_time for start, end in spans)
    assert sum(end - start for start, end in spans) <= parent.info.end_time - parent.info.start_time
    assert parent.info.start_time <= 1000 * min(p.started for p in evaluation.policies)  # opened before the replay
    learner, replay = children[LEARNER.name], evaluation.policy(LEARNER.name).replay
    replay_ms = 1000 * evaluation.data.examples / replay.examples_per_second
    assert learner.info.end_time - learner.info.start_time >= replay_ms - 1  # the child's span holds its replay
    assert parent.info.status == "FINISHED" and all(r.info.status == "FINISHED" for r in children.values())


def test_the_registered_policy_is_a_pyfunc_model_whose_pmf_is_the_vw_models_own(logged: Path, tmp_path: Path) -> None:
    import vowpalwabbit

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _, version, promotion = evaluate_and_register(logged, EvaluationConfig(candidates=(LEARNER,), n_resamples=100), uri)
    assert version == "1" and promotion.promoted
    registered = tracking_client(uri).get_model_version(MODEL_NAME, version)
    model = mlflow.pyfunc.load_model(registered.source)
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["user_features", "context", "candidates",
                                                                          "portrait"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["item_ids", "pmf"]

    joined = load_joined(logged)[-5:]
    records = exported(joined)
    assert all(r.get("portrait") for r in records)  # users come back: their portraits were in the lines served
    frame = pd.DataFrame({
        "user_features": [json.dumps(r["user_features"]) for r in records],
        "context": [json.dumps(r["context"]) for r in records],
        "candidates": [json.dumps(r["candidates"]) for r in records],
        "portrait": [json.dumps(r["portrait"]) for r in records],
    })
    predicted = model.predict(frame)
    policy = download_policy(registered, uri, tmp_path / "served")
    assert policy.model_path.name == "model.vw" and policy.model_path.parent.name == "artifacts"
    model_dir = policy.model_path.parent.parent  # the model carries recbandit's code, installs no "recbandit"
    assert (model_dir / "code" / "engine" / "bandit.py").is_file()
    assert not any(line.split("=")[0].strip() == "recbandit" for line in (model_dir / "requirements.txt").read_text().split())
    vw = vowpalwabbit.Workspace(f"-i {policy.model_path} --quiet")
    try:
        for record, event, ids, pmf in zip(records, joined, predicted["item_ids"], predicted["pmf"], strict=True):
            shared, actions = decision_lines(event.decision)  # the lines the server decided from
            lines = [shared, *actions]
            own = np.asarray(vw.predict(lines), dtype=float)
            assert list(ids) == [c["item_id"] for c in record["candidates"]]
            assert sum(pmf) == pytest.approx(1.0, abs=1e-9)
            np.testing.assert_allclose(pmf, own / own.sum(), atol=1e-6)
            assert max(pmf) > 0.5  # a trained policy, not the uniform pmf of an empty model
    finally:
        vw.finish()


def test_a_log_too_small_to_separate_candidates_registers_nothing_and_says_why(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    make_log(tmp_path / "one", events=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    candidates = tmp_path / "candidates.json"
    candidates.write_text(json.dumps([c.to_dict() for c in CONFIG.candidates]))
    code = main(["evaluate", "--data-dir", str(tmp_path / "one"), "--tracking-uri", uri, "--candidates",
                 str(candidates), "--resamples", "50", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert ("not registering: the log has 1 decision and the best candidate an effective sample size of"
            in out.replace("\n", " "))
    assert "at least 100 decisions (and an effective sample size of 30 for the best candidate)" in out
    assert "pass --min-decisions" in out and "no candidate is separated" in out and "registered" not in out
    client, parent, _ = _runs(uri)
    assert client.search_registered_models() == []
    assert parent.data.tags["promotion"].startswith("refused: not registering") and parent.info.status == "FINISHED"
    assert parent.data.tags["best_policy_separated"] == "false"


def test_the_floor_is_stated_and_the_log_above_it_registers_as_before(logged: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = EvaluationConfig(candidates=(LEARNER,), n_resamples=100, compare_python_replay=False)
    _, version, promotion = evaluate_and_register(logged, config, uri, floor=RegistrationFloor(min_decisions=301))
    assert version is None and not promotion.promoted
    assert promotion.reason.startswith("not registering: the log has 300 decisions")
    assert "at least 301 decisions" in promotion.reason
    _, version, promotion = evaluate_and_register(logged, config, uri, floor=RegistrationFloor(min_ess=1e6))
    assert version is None and "an effective sample size of 1e+06" in promotion.reason
    _, version, promotion = evaluate_and_register(logged, config, uri)
    assert (version, promotion.promoted, promotion.reason) == ("1", True, "no champion yet")


def test_evaluate_leaves_nothing_in_the_temporary_directory(logged: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    assert tempfile.gettempdir() == str(scratch)
    evaluation = evaluate(logged, CONFIG)
    assert os.listdir(scratch) == []
    assert all(p.replay is None or p.replay.model_path is None for p in evaluation.policies)
    tracked_evaluation(logged, CONFIG, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert os.listdir(scratch) == []


def test_candidates_png_orders_the_bars_by_value_and_is_logged(logged: Path, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    evaluation, _ = tracked_evaluation(logged, CONFIG, uri)
    order = candidate_order(evaluation)
    values = [p.overall["dr"].value for p in order]
    assert values == sorted(values, reverse=True) and len(order) == 4
    assert [p.name for p in order] != [p.name for p in evaluation.policies]  # the log's order is not the plot's
    assert order[-1].name in (EXPLORER.name, "uniform-random") and LOGGING in [p.name for p in order]
    assert evaluation.data.observed_value == pytest.approx(np.mean([e.reward for e in slot_examples(load_joined(logged))]))
    client, parent, _ = _runs(uri)
    files = {f.path: f.file_size for f in client.list_artifacts(parent.info.run_id)}
    assert files["candidates.png"] > 10_000
    local = client.download_artifacts(parent.info.run_id, "candidates.png", str(tmp_path))
    assert Path(local).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
