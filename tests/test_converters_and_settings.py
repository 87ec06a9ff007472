"""Converters and settings, without a server."""

from __future__ import annotations

import pytest

from engine.errors import InvalidRequest
from engine.rewards import Aggregation
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.converters import features_to_domain, features_to_proto, item_to_domain, item_to_proto
from server.settings import Settings


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


def test_settings_come_from_defaults_then_environment_then_flags() -> None:
    env = {"RECBANDIT_PORT": "6000", "RECBANDIT_REWARD_WINDOW": "2h", "RECBANDIT_REFLECTION": "false",
           "RECBANDIT_EXPLORATION_PARAMETER": "0.2", "RECBANDIT_EXPLORATION": "epsilon"}
    settings = Settings.from_env(env, port=7000, reward_aggregation="sum", data_dir=None)
    assert (settings.port, settings.reflection, settings.data_dir) == (7000, False, "recbandit-data")
    config = settings.engine_config()
    assert config.rewards.window_seconds == 7200 and config.rewards.aggregation is Aggregation.SUM
    assert config.bandit.vw_arguments().startswith("--cb_explore_adf --epsilon 0.2 -q UI -q CI")


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="RECBANDIT_PORT: cannot read 'http' as int"):
        Settings.from_env({"RECBANDIT_PORT": "http"})


@pytest.mark.parametrize(
    ("exploration", "parameter", "message"),
    [("greedy", None, "exploration: must be one of"), ("epsilon", 1.5, "out of range for epsilon"),
     ("bag", 2.5, "bag needs a whole number")],
)
def test_bad_exploration_settings_are_refused(exploration: str, parameter: float | None, message: str) -> None:
    settings = Settings(exploration=exploration, exploration_parameter=parameter)
    with pytest.raises(InvalidRequest, match=message):
        settings.engine_config().bandit.vw_arguments()


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [(["--reward-aggregation", "x"], {}, "reward_aggregation: must be one of earliest, sum, got 'x'"),
     ([], {"RECBANDIT_REWARD_AGGREGATION": "x"}, "reward_aggregation: must be one of"),
     ([], {"RECBANDIT_PORT": "http"}, "RECBANDIT_PORT: cannot read 'http' as int")],
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
