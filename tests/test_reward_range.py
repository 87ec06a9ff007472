"""The ``reward_range`` setting: the range of rewards the learner assumes (regcbopt's cost range)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.bandit import VWBandit
from engine.errors import ConfigurationError
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.settings import Settings


def test_the_default_reward_range_is_zero_to_one() -> None:
    assert Settings().engine_config().bandit.reward_range == (0.0, 1.0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0,500", (0.0, 500.0)), (" -1 , 1 ", (-1.0, 1.0)), ("-2.5,1e3", (-2.5, 1000.0)), ("-10,-5", (-10.0, -5.0))],
)
def test_a_reward_range_from_the_environment_reaches_the_bandit(
        text: str, expected: tuple[float, float], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBANDIT_REWARD_RANGE", text)
    settings = Settings.load()
    assert settings.engine_config().bandit.reward_range == expected


def test_the_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECBANDIT_REWARD_RANGE", "0,10")
    settings = Settings.load(reward_range="0,500")
    assert settings.engine_config().bandit.reward_range == (0.0, 500.0)


@pytest.mark.parametrize("text", ["1", "0,1,2", "", "a,b", "0;1", "5,1", "1,1", "0,inf", "nan,1", "-inf,0"])
def test_a_bad_reward_range_names_the_setting(text: str) -> None:
    settings = Settings(reward_range=text)
    expected = f"reward_range: must be LOW,HIGH: two finite numbers with LOW < HIGH, got {text!r}"
    with pytest.raises(ConfigurationError) as raised:
        settings.engine_config()
    assert str(raised.value) == expected and raised.value.setting == "reward_range"


def test_regcbopt_gets_the_flipped_cost_range_in_the_live_workspace() -> None:
    bandit = Settings(exploration="regcbopt", reward_range="-1,500").engine_config().bandit
    assert "--cb_min_cost -500.0 --cb_max_cost 1.0" in bandit.vw_arguments()
    live = VWBandit(bandit)
    try:
        assert "--cb_max_cost 1 --cb_min_cost -500" in live.arguments
    finally:
        live.close()


def test_other_explorations_do_not_pass_a_cost_range() -> None:
    bandit = Settings(exploration="squarecb", reward_range="0,500").engine_config().bandit
    assert bandit.reward_range == (0.0, 500.0) and "cb_min_cost" not in bandit.vw_arguments()


def test_regcbopt_refuses_a_default_reward_outside_the_reward_range() -> None:
    settings = Settings(exploration="regcbopt", reward_range="0,500", default_reward=-1.0)
    with pytest.raises(ConfigurationError, match=r"^default_reward: -1 lies outside reward_range \[0, 500\]"):
        settings.engine_config()
    assert Settings(exploration="regcbopt", reward_range="0,500", default_reward=500.0).engine_config()


def test_a_default_reward_outside_the_range_is_accepted_where_the_range_is_unused() -> None:
    config = Settings(exploration="squarecb", default_reward=-0.25).engine_config()
    assert config.rewards.default_reward == -0.25 and config.bandit.reward_range == (0.0, 1.0)


def test_regcbopt_warns_when_rewards_can_leave_the_reward_range() -> None:
    wide = Settings(exploration="regcbopt", reward_range="0,500").reward_range_warning()
    assert wide is not None and "[0, 500]" in wide and "Feedback accepts [-1e+06, 1e+06]" in wide
    narrow = Settings(exploration="regcbopt", reward_range="0,500", min_reward=0.0, max_reward=500.0)
    assert narrow.reward_range_warning() is None
    summed = Settings(exploration="regcbopt", min_reward=0.0, max_reward=1.0, reward_aggregation="sum")
    assert "reward_aggregation=sum" in (summed.reward_range_warning() or "")
    assert Settings(exploration="squarecb").reward_range_warning() is None


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [(["--reward-range", "5,1"], {}, "reward_range: must be LOW,HIGH: two finite numbers with LOW < HIGH, got '5,1'"),
     ([], {"RECBANDIT_REWARD_RANGE": "0..1"}, "reward_range: must be LOW,HIGH"),
     (["--exploration", "regcbopt", "--reward-range=-1,500", "--default-reward", "-2"], {},
      "default_reward: -2 lies outside reward_range [-1, 500]")],
)
def test_serve_with_a_bad_reward_range_exits_2_with_one_line_naming_it(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from server.cli import main

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "0", "--data-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("serve: ") and message in err and err.count("\n") == 1


def test_a_served_regcbopt_model_reports_its_cost_range(start_server) -> None:  # type: ignore[no-untyped-def]
    _, client = start_server(exploration="regcbopt", reward_range="0,500", min_reward=0.0, max_reward=500.0)
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert info.exploration.algorithm == "regcbopt"
    assert "--cb_max_cost -0 --cb_min_cost -500" in info.vw_arguments


def test_a_checkpoint_keeps_its_cost_range(start_server) -> None:  # type: ignore[no-untyped-def]
    first, _ = start_server(exploration="regcbopt", reward_range="0,500", min_reward=0.0, max_reward=500.0)
    first.stop(grace=1.0)
    _, client = start_server(exploration="regcbopt", reward_range="0,1")
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert "--cb_max_cost -0 --cb_min_cost -500" in info.vw_arguments
