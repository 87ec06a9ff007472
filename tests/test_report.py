"""Admin/GetLearningReport and ``recbandit report`` against a real server driven by the simulated storefront."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest

from engine.ope import Estimate
from engine.report import Verdict, judge
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.app import start
from server.cli import main
from server.client import RecbanditClient
from server.settings import Settings
from tests.conftest import stubs, write_tokens
from tests.test_api import status_of
from training.simulator import Storefront, WorldConfig
from training.storefront_client import Behaviour, StorefrontClient

# Every miss is reported at once (reward 0) and nothing is deferred or lost, so every decision's
# slot 0 is final when the round ends, and its reward is the click the simulator drew. The report
# counts a decision once its reward window (1 s here) has closed.
BEHAVIOUR = Behaviour(feedback_delay=25, feedback_loss=0.0, deferred_channel="none", report_misses=True)
REWARD_WINDOW = "1s"
STRONG = WorldConfig(n_items=40, n_users=200, candidates_per_visit=8, multi_slot=False, taste_scale=3.0, seed=5)
NO_SIGNAL = WorldConfig(n_items=40, n_users=200, candidates_per_visit=8, multi_slot=False, taste_scale=0.0,
                        interest_match=0.0, quality_scale=0.0, bias=-1.0, seed=5)  # every item: sigmoid(-1)


def simulate(data_dir: Path, config: WorldConfig, visits: int) -> SimpleNamespace:
    """A server on port 0 that served ``visits`` visits of the world, one at a time (a deterministic log)."""
    running = start(Settings(host="127.0.0.1", port=0, data_dir=str(data_dir), seed=3, reward_window=REWARD_WINDOW))
    world = Storefront(config)
    with RecbanditClient(f"127.0.0.1:{running.port}") as recbandit:
        StorefrontClient(recbandit, world, BEHAVIOUR).play(
            visits, concurrency=1, after_round=lambda: running.engine.wait_until_learned(10.0))
    wait_until_windows_closed(running, f"visit-{visits - 1:07d}")
    return SimpleNamespace(running=running, client=stubs(running.port), world=world, visits=world.visits(visits))


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    served = simulate(tmp_path_factory.mktemp("strong") / "data", STRONG, 400)
    yield served
    served.client.channel.close()
    served.running.stop(grace=1.0)


def wait_until_windows_closed(running, last_event_id: str) -> None:  # type: ignore[no-untyped-def]
    """Sleep until the report counts the last decision: its window ended, and was closed (one second later)."""
    deadline = running.engine.log.get_decision(last_event_id).deadline
    time.sleep(max(0.0, deadline + 2 * running.engine.config.maintenance_interval + 0.1 - time.time()))


def estimates(version: pb.ModelVersionReport) -> dict[str, pb.PolicyEstimate]:
    return {e.policy: e for e in version.estimates}


def test_a_model_that_learned_is_learning(learned: SimpleNamespace) -> None:
    report = learned.client.admin.GetLearningReport(pb.GetLearningReportRequest())
    overall = report.overall
    assert overall.decisions == 400 and overall.verdict == pb.LEARNING_VERDICT_LEARNING
    assert overall.summary.startswith("learning: beats random by ")
    assert overall.lift_ci_low > 0 and overall.more_decisions_needed == 0
    assert [v.model_version for v in report.versions] == [report.model_version.split("@")[0]]
    assert report.versions[0].decisions == 400 and report.versions[0].lift_over_random == overall.lift_over_random
    random = estimates(overall)["random"]
    assert overall.lift_over_random == pytest.approx(overall.observed_reward - random.value, abs=1e-12)
    assert overall.lift_ci_low <= overall.lift_over_random <= overall.lift_ci_high


def test_estimates_match_the_simulators_truth(learned: SimpleNamespace) -> None:
    """Uniform random's estimate is near the world's mean click probability, which the served reward is not."""
    world, visits = learned.world, learned.visits
    true_random = float(np.mean([world.click_probabilities(v).mean() for v in visits]))
    overall = learned.client.admin.GetLearningReport(pb.GetLearningReportRequest()).overall
    found = estimates(overall)
    assert abs(found["random"].value - true_random) < 0.05
    assert found["random"].ci_low < true_random < found["random"].ci_high
    assert overall.observed_reward - true_random > 0.12  # so the check above tells a weighted estimate from a mean
    assert 0 < found["random"].effective_sample_size < overall.decisions
    assert found["greedy_at_decision"].value > found["random"].value
    assert {e.estimator for e in overall.estimates} == {"snips"}
    assert set(found) == {"random", "first_candidate", "greedy", "greedy_at_decision"}


def test_the_report_command_prints_the_verdict_and_writes_a_png(
    learned: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.png"
    assert main(["report", "--target", f"127.0.0.1:{learned.running.port}", "--window", "2h", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "learning: beats random by" in printed and "uniform random (snips)" in printed
    assert "— 400 decisions with a final reward" in printed and f"wrote {out}" in printed
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rewards_independent_of_the_choice_are_not_yet_distinguishable(tmp_path: Path) -> None:
    served = simulate(tmp_path / "data", NO_SIGNAL, 400)
    try:
        overall = served.client.admin.GetLearningReport(pb.GetLearningReportRequest()).overall
    finally:
        served.client.channel.close()
        served.running.stop(grace=1.0)
    assert overall.decisions == 400
    assert overall.verdict == pb.LEARNING_VERDICT_NOT_YET_DISTINGUISHABLE, overall.summary
    assert overall.lift_ci_low <= 0 <= overall.lift_ci_high
    assert overall.summary.startswith("not yet distinguishable after 400 decisions")
    truth = 1 / (1 + np.exp(1.0))
    found = estimates(overall)
    assert abs(found["random"].value - truth) < 0.06 and abs(found["greedy_at_decision"].value - truth) < 0.06


def test_a_few_decisions_are_not_enough(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(seed=3, reward_window=REWARD_WINDOW)
    world = Storefront(STRONG)
    with RecbanditClient(f"127.0.0.1:{running.port}") as recbandit:
        StorefrontClient(recbandit, world, BEHAVIOUR).play(12, concurrency=1)
    wait_until_windows_closed(running, "visit-0000011")
    report = client.admin.GetLearningReport(pb.GetLearningReportRequest(max_decisions=10))
    assert report.overall.decisions == 10
    assert report.overall.verdict == pb.LEARNING_VERDICT_NOT_YET_DISTINGUISHABLE
    assert report.overall.more_decisions_needed >= 20
    assert f"about {report.overall.more_decisions_needed} more needed" in report.overall.summary


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (pb.GetLearningReportRequest(window_seconds=-1), "window_seconds: must be within [0, 7776000] seconds"),
        (pb.GetLearningReportRequest(window_seconds=float("nan")), "window_seconds: must be within"),
        (pb.GetLearningReportRequest(window_seconds=91 * 86400), "(0 means 86400), got 7862400.0"),
        (pb.GetLearningReportRequest(max_decisions=-5), "max_decisions: must be within [0, 50000]"),
        (pb.GetLearningReportRequest(max_decisions=50_001), "(0 means 10000), got 50001"),
    ],
)
def test_out_of_range_requests_are_invalid(server, request_, message) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    with pytest.raises(grpc.RpcError) as error:
        client.admin.GetLearningReport(request_)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_open_reward_windows_are_no_data_with_tokens_through_the_command(  # type: ignore[no-untyped-def]
    start_server, tmp_path, capsys
) -> None:
    """Rewards reported, and final, but their windows (10 minutes) still open: nothing to count yet."""
    tokens = write_tokens(tmp_path / "tokens", {"admin": "a" * 32, "catalog": "c" * 32, "storefront": "s" * 32})
    running, _ = start_server(auth_tokens=str(tokens))
    with RecbanditClient(f"127.0.0.1:{running.port}", token="c" * 32) as recbandit:  # it publishes the catalog
        StorefrontClient(recbandit, Storefront(STRONG), BEHAVIOUR).play(12, concurrency=1)
    assert running.engine.log.reader.counts()["outcomes"] == 12
    (tmp_path / "admin-token").write_text("a" * 32 + "\n")
    (tmp_path / "storefront-token").write_text("s" * 32 + "\n")
    common = ["report", "--target", f"127.0.0.1:{running.port}", "--out", str(tmp_path / "empty.png")]
    assert main([*common, "--token-file", str(tmp_path / "admin-token")]) == 0
    printed = capsys.readouterr().out
    assert "all versions: no data: no decision in the window has its reward window closed yet" in printed
    assert (tmp_path / "empty.png").exists()
    assert main([*common, "--token-file", str(tmp_path / "storefront-token")]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert main([*common, "--window", "a week"]) == 2
    assert "--window: not a duration" in capsys.readouterr().err


def test_more_decisions_needed_scale_as_one_over_root_n() -> None:
    # lift 0.01, lower half-width 0.02 after 1000 decisions: 1000 * (0.02 / 0.01)^2 = 4000 in all
    verdict, summary, more = judge(Estimate(0.01, -0.01, 0.03, 100.0, 1000))
    assert (verdict, more) == (Verdict.NOT_YET_DISTINGUISHABLE, 3000)
    assert summary == "not yet distinguishable after 1000 decisions; about 3000 more needed"
    assert judge(Estimate(-0.01, -0.03, 0.01, 100.0, 1000))[2] == 0
    assert judge(Estimate(-0.05, -0.08, -0.02, 100.0, 1000))[:2] == (
        Verdict.WORSE_THAN_RANDOM, "worse than random by 0.050 [0.020, 0.080]")


def test_a_second_report_while_one_runs_is_refused_at_once(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    with running.engine._reporting:  # as a report running holds it
        code, details = status_of(client.admin.GetLearningReport, pb.GetLearningReportRequest())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details == "a learning report is already running; retry when it is done"
    assert client.admin.GetLearningReport(pb.GetLearningReportRequest()).overall.decisions == 0


def test_an_estimate_without_support_is_printed_as_such_not_as_a_certain_zero(tmp_path: Path) -> None:
    from engine.report import LearningReport, PolicyValue, VersionReport
    from training.report import format_report, plot_report

    version = VersionReport(
        model_version="vw-1", decisions=40, observed=Estimate(0.3, 0.2, 0.4, 40.0, 40),
        estimates=(PolicyValue("random", "snips", Estimate(0.2, 0.1, 0.3, 12.0, 40)),
                   PolicyValue("first_candidate", "snips", Estimate(0.0, 0.0, 0.0, 0.0, 40))),
        lift=Estimate(0.1, -0.05, 0.2, math.nan, 40), verdict=Verdict.NOT_YET_DISTINGUISHABLE,
        summary="not yet distinguishable after 40 decisions; about 100 more needed", more_decisions_needed=100)
    text = format_report(LearningReport(0.0, 3600.0, version, (version,), "vw-1@40"))
    first = next(line for line in text.splitlines() if "first candidate" in line)
    assert first.split() == ["first", "candidate", "(snips)", "n/a", "no", "support", "0"]
    plot_report(LearningReport(0.0, 3600.0, version, (version,), "vw-1@40"), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
