"""Converters and settings, without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ConfigurationError, InvalidRequest
from engine.rewards import Aggregation
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.wire import features_to_domain, features_to_proto, item_to_domain, item_to_proto
from server.settings import Settings, choices


def test_every_feature_kind_round_trips() -> None:
    features = {"segment": "sporty", "age": 31.0, "member": False, "tags": ("run", "hike"), "empty": ""}
    message = pb.Item(item_id="sku-1", active=True)
    features_to_proto(features, message.features)
    assert features_to_domain("items[0].features", message.features) == features
    assert item_to_proto(item_to_domain("items[0]", message)) == message


def test_an_unset_feature_value_names_the_field() -> None:
    message = pb.Item(item_id="x")
    message.features["colour"].CopyFrom(pb.FeatureValue())
    with pytest.raises(InvalidRequest, match=r"^items\[2\]\.features\['colour'\]: must set one of"):
        item_to_domain("items[2]", message)


def test_settings_come_from_defaults_then_config_file_then_environment_then_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "recbandit.toml"
    config.write_text('port = 5000\nreward_window = "1h"\nseed = 3\nlearning_rate = 0.25\n'
                      '[evaluate]\nmin_decisions = 7\nseed = 9\n')
    for name, value in {"RECBANDIT_PORT": "6000", "RECBANDIT_REWARD_WINDOW": "2h", "RECBANDIT_REFLECTION": "false",
                        "RECBANDIT_EXPLORATION_PARAMETER": "0.2", "RECBANDIT_EXPLORATION": "epsilon",
                        "RECBANDIT_SEED": "4", "RECBANDIT_EVALUATE__SEED": "11"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.load(config, port=7000, reward_aggregation="sum", data_dir=None, evaluate={"seed": None})
    assert (settings.port, settings.reflection, settings.data_dir) == (7000, False, "recbandit-data")  # flag, env, default
    assert (settings.seed, settings.learning_rate) == (4, 0.25)  # the environment over the file; the file alone
    assert (settings.evaluate.min_decisions, settings.evaluate.seed) == (7, 11)  # a command's table, its variable
    engine = settings.engine_config()
    assert engine.rewards.window_seconds == 7200 and engine.rewards.aggregation is Aggregation.SUM
    assert engine.bandit.vw_arguments().startswith("--cb_explore_adf --epsilon 0.2 -q UI -q CI")
    monkeypatch.setenv("RECBANDIT_CONFIG", str(config))
    assert Settings.load().evaluate.min_decisions == 7  # the file named by RECBANDIT_CONFIG


def test_a_bad_value_names_the_setting_and_where_it_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBANDIT_PORT", "http")
    with pytest.raises(ConfigurationError, match=r"^port: Input should be a valid integer.*got 'http' "
                                             r"\(set by --port, RECBANDIT_PORT or port in the config file\)$"):
        Settings.load()
    monkeypatch.delenv("RECBANDIT_PORT")
    monkeypatch.setenv("RECBANDIT_EVALUATE__MIN_DECISIONS", "many")
    with pytest.raises(ConfigurationError, match=r"^evaluate\.min_decisions: .*RECBANDIT_EVALUATE__MIN_DECISIONS or "
                                             r"\[evaluate\] min_decisions in the config file\)$"):
        Settings.load()
    monkeypatch.delenv("RECBANDIT_EVALUATE__MIN_DECISIONS")
    config = tmp_path / "recbandit.toml"
    config.write_text("prot = 50051\n")
    with pytest.raises(ConfigurationError, match=r"^prot: is not a setting"):
        Settings.load(config)
    config.write_text("port = \n")
    with pytest.raises(ConfigurationError, match=r"^config: .*recbandit.toml cannot be read as TOML"):
        Settings.load(config)
    with pytest.raises(ConfigurationError, match=r"^config: .*missing.toml is not a file$"):
        Settings.load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("exploration", "parameter", "message"),
    [("greedy", None, "exploration: must be one of"), ("epsilon", 1.5, "out of range for epsilon"),
     ("bag", 2.5, "bag needs a whole number")],
)
def test_bad_exploration_settings_are_refused(exploration: str, parameter: float | None, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.load(exploration=exploration, exploration_parameter=parameter).engine_config().bandit.vw_arguments()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [(["--reward-aggregation", "x"], {}, "reward_aggregation: must be one of earliest, sum, got 'x'"),
     ([], {"RECBANDIT_REWARD_AGGREGATION": "x"}, "reward_aggregation: must be one of"),
     ([], {"RECBANDIT_PORT": "http"}, "port: Input should be a valid integer, unable to parse string as an "
                                      "integer, got 'http' (set by --port, RECBANDIT_PORT or port in the config file)")],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line_naming_it(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from server.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("serve: ") and message in err and err.count("\n") == 1


def test_the_commands_defaults_are_those_of_the_code_they_feed() -> None:
    """The settings model states each command's defaults for --help; they must be the code's own."""
    from engine.ope import ESTIMATORS
    from training.embeddings import LOSSES, EmbeddingConfig
    from training.evaluate import EvaluationConfig
    from training.registry import RegistrationFloor

    options, config = Settings().train_embeddings, EmbeddingConfig()
    shared = set(type(options).model_fields) & {f for f in EmbeddingConfig.__dataclass_fields__}
    assert len(shared) >= 12
    assert {name: getattr(options, name) for name in shared} == {name: getattr(config, name) for name in shared}
    assert options.no_refit is not config.refit
    assert choices(("train_embeddings", "loss")) == LOSSES
    evaluate, defaults, floor = Settings().evaluate, EvaluationConfig(), RegistrationFloor()
    assert (evaluate.estimator, evaluate.clip, evaluate.resamples, evaluate.seed) == (
        defaults.primary_estimator, defaults.clip, defaults.n_resamples, defaults.seed)
    assert (evaluate.min_decisions, evaluate.min_ess) == (floor.min_decisions, floor.min_ess)
    assert set(choices(("evaluate", "estimator"))) == set(ESTIMATORS) == set(choices(("promote", "estimator")))


def test_settings_built_in_code_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the command line (Settings.load) reads RECBANDIT_* and the config file: a server that
    code starts (tests, benchmarks, the demo) holds what it was given."""
    monkeypatch.setenv("RECBANDIT_METRICS_PORT", "9100")
    monkeypatch.setenv("RECBANDIT_AUTH_TOKENS", "/somewhere/tokens")
    assert (Settings(port=0).metrics_port, Settings().auth_tokens) == (0, "")
    assert (Settings.load().metrics_port, Settings.load().auth_tokens) == (9100, "/somewhere/tokens")


def test_a_command_table_in_one_variable_must_be_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBANDIT_EVALUATE", "notjson")
    with pytest.raises(ConfigurationError, match=r"^environment: .*\"evaluate\".*must be JSON; or set RECBANDIT_<COMMAND>__<NAME>"):
        Settings.load()
    monkeypatch.setenv("RECBANDIT_EVALUATE", '{"min_decisions": 5}')
    assert Settings.load().evaluate.min_decisions == 5


def test_a_configuration_error_is_not_a_request_error_and_maps_to_no_status_code() -> None:
    from server.errors import status_code

    error = ConfigurationError("port", "must be within 0..65535, got 70000")
    assert (str(error), error.setting, error.reason) == ("port: must be within 0..65535, got 70000", "port",
                                                        "must be within 0..65535, got 70000")
    assert not isinstance(error, InvalidRequest) and status_code(error) is None  # INTERNAL if it reached a client
