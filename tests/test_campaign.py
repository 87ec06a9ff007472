"""Campaign results: per arm, channel and surface, and recbandit's uplift over control with an
interval that resamples users."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from engine.campaign import CONTROL, RECBANDIT, campaign_report, in_control
from engine.records import JoinedEvent, LoggedDecision, Reward, SlotChoice
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from engine.types import Candidate


def event(n: int, user: str, channel: str, clicked: bool, revenue: float) -> JoinedEvent:
    decision = LoggedDecision(f"e{n}", 100.0 + n, user, {}, {"channel": channel, "surface": "home"},
                              (Candidate("a"), Candidate("b")), (SlotChoice("a", 0.5, (0.5, 0.5)),), "v", False, 200.0 + n)
    rewards = []
    if clicked:
        rewards.append(Reward(f"e{n}", "a", "click", 1.0, 101.0 + n))
    if revenue:
        rewards.append(Reward(f"e{n}", "a", "purchase", revenue, 102.0 + n))
    return JoinedEvent(decision, (None,), tuple(rewards))


def planted(users: int, seed: int, ctr: dict[str, float]) -> tuple[list[JoinedEvent], dict[str, str]]:
    """Each user in one arm (a third in control), ten visits, clicking with their arm's rate."""
    rng = np.random.default_rng(seed)
    events, arms = [], {}
    for u in range(users):
        user = f"user-{u}"
        arms[user] = CONTROL if in_control(user, 1 / 3) else RECBANDIT
        taste = rng.uniform(0.5, 1.5)  # users differ: their visits are not independent
        for v in range(10):
            clicked = rng.random() < min(1.0, ctr[arms[user]] * taste)
            bought = clicked and rng.random() < 0.2
            events.append(event(len(events), user, "app" if u % 2 else "web", clicked, 30.0 if bought else 0.0))
    return events, arms


def test_a_planted_uplift_is_measured_and_its_interval_covers_it() -> None:
    events, arms = planted(3000, seed=1, ctr={RECBANDIT: 0.12, CONTROL: 0.08})
    report = campaign_report(events, lambda e: arms[e.user_id], closed_by=1e9, resamples=400)
    overall = report.overall()
    control, treated = overall.arms[CONTROL], overall.arms[RECBANDIT]
    assert 0.30 < control.users / 3000 < 0.37  # the hash gives control about its share
    assert control.impressions == 10 * control.users and treated.impressions == 10 * treated.users
    ctr = next(u for u in overall.uplifts if u.metric == "ctr")
    assert ctr.low < 0.5 < ctr.high and ctr.low > 0.3 and ctr.high < 0.8  # planted: 0.12 / 0.08 − 1 = 0.5
    assert ctr.estimate == pytest.approx(treated.metric("ctr") / control.metric("ctr") - 1)
    revenue = next(u for u in overall.uplifts if u.metric == "revenue_per_mille")
    assert revenue.low < 0.5 < revenue.high  # purchases follow clicks
    channels = {(s.channel, s.surface) for s in report.segments}
    assert {("*", "*"), ("app", "*"), ("web", "*"), ("*", "home"), ("app", "home"), ("web", "home")} == channels


def test_no_uplift_gives_an_interval_around_zero_and_open_windows_are_left_out() -> None:
    events, arms = planted(3000, seed=2, ctr={RECBANDIT: 0.1, CONTROL: 0.1})
    report = campaign_report(events, lambda e: arms[e.user_id], closed_by=1e9, resamples=400)
    ctr = next(u for u in report.overall().uplifts if u.metric == "ctr")
    assert ctr.low < 0 < ctr.high and ctr.high - ctr.low < 0.3
    late = campaign_report(events, lambda e: arms[e.user_id], closed_by=200.0 + 999, resamples=0)
    assert late.decisions == 1000  # the windows of the others close after 1,199


def test_users_are_resampled_not_impressions() -> None:
    """Users who click on every visit or never: the per-impression binomial interval would be far
    narrower than the honest one, which sees only as many independent draws as users."""
    events, arms = [], {}
    for u in range(400):
        user = f"u{u}"
        arms[user] = CONTROL if u % 2 else RECBANDIT
        clicks = u % 4 in (0, 1)  # half of each arm's users click on every visit, half never
        events += [event(len(events), user, "app", clicks, 0.0) for _ in range(50)]
    report = campaign_report(events, lambda e: arms[e.user_id], closed_by=1e9, resamples=400)
    ctr = next(u for u in report.overall().uplifts if u.metric == "ctr")
    treated = report.overall().arms[RECBANDIT]
    naive = 1.96 * math.sqrt(2 * 0.25 / treated.impressions) / 0.5  # relative half-width, impressions independent
    assert (ctr.high - ctr.low) / 2 > 3 * naive


def test_the_arm_of_a_user_is_stable_and_close_to_its_share() -> None:
    users = [f"user-{i}" for i in range(20_000)]
    control = sum(in_control(u, 0.1) for u in users)
    assert 1800 < control < 2200
    assert [in_control(u, 0.1) for u in users[:100]] == [in_control(u, 0.1) for u in users[:100]]
    assert not any(in_control(u, 0.0) for u in users[:100])
    assert sum(in_control(u, 0.1, salt="spring") != in_control(u, 0.1) for u in users) > 1000  # a new campaign reshuffles


def test_control_users_get_the_storefronts_order_through_a_real_server(start_server, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from server.cli import main as cli
    from tests.test_api import recommend_request

    running, client = start_server(control_share=0.3, campaign="spring", reward_window="1s")
    arms = {}
    for n in range(200):
        request = recommend_request(n=6, num_results=2)
        request.user_id = f"user-{n}"
        reply = client.recommender.Recommend(request)
        logged = running.engine.log.get_decision(reply.event_id)
        arms[request.user_id] = logged.arm
        assert logged.arm == (CONTROL if in_control(request.user_id, 0.3, "spring") else RECBANDIT)
        if logged.arm == CONTROL:  # the storefront's order, no draw: probability 1
            assert [i.item_id for i in reply.items] == ["i0", "i1"]
            assert [s.probability for s in logged.slots] == [1.0, 1.0] and logged.slots[0].pmf[0] == 1.0
        else:
            assert sum(logged.slots[0].pmf) == pytest.approx(1.0) and 0 < logged.slots[0].probability < 1
        if n % 3 == 0:
            client.recommender.Feedback(pb.FeedbackRequest(event_id=reply.event_id, reward=1.0, label="click"))
    assert 40 < sum(a == CONTROL for a in arms.values()) < 80
    report = campaign_report(running.engine.log.reader.history(), closed_by=1e12, resamples=100)
    overall = report.overall()
    assert overall.arms[CONTROL].users + overall.arms[RECBANDIT].users == 200
    assert overall.arms[CONTROL].impressions == 2 * overall.arms[CONTROL].users
    assert sum(a.clicks for a in overall.arms.values()) == 67  # one click for every third decision

    png = tmp_path / "campaign.png"
    time.sleep(1.1)  # every reward window has closed
    assert cli(["campaign-report", "--data-dir", str(tmp_path / "data"), "--out", str(png), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "| * | * | recbandit |" in out and "| * | * | control |" in out and "**uplift**" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_the_learning_report_gives_the_campaign_counted_by_hand_through_a_real_server(  # type: ignore[no-untyped-def]
    start_server, tmp_path, capsys
) -> None:
    """A planted log: 40 users, 3 single-slot visits each; recbandit's users click on 2 visits in 3
    (every visit for one in four of them) and buy on the first, control's click on 1 visit in 3
    (never, for one in four) and never buy. An email page never opened is not an impression."""
    from server.cli import main as cli
    from tests.test_api import recommend_request
    from tests.test_report import wait_until_windows_closed

    running, client = start_server(control_share=0.5, campaign="planted", reward_window="1s")
    truth = {arm: {"users": 0, "impressions": 0, "clicks": 0, "conversions": 0, "revenue": 0.0}
             for arm in (RECBANDIT, CONTROL)}
    app = {arm: 0 for arm in (RECBANDIT, CONTROL)}  # clicks on the app channel
    for u in range(40):
        user = f"user-{u}"
        arm = CONTROL if in_control(user, 0.5, "planted") else RECBANDIT
        if arm == RECBANDIT:
            clicking = 3 if u % 4 == 0 else 2
        else:
            clicking = 0 if u % 4 == 0 else 1
        truth[arm]["users"] += 1
        for visit in range(3):
            request = recommend_request(n=4, num_results=1)
            request.user_id = user
            request.context["channel"].string_value = "app" if u % 2 else "web"
            request.context["surface"].string_value = "home"
            event_id = client.recommender.Recommend(request).event_id
            truth[arm]["impressions"] += 1
            if visit < clicking:
                client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0, label="click"))
                truth[arm]["clicks"] += 1
                app[arm] += u % 2
            if arm == RECBANDIT and visit == 0:
                client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=25.0, label="purchase"))
                truth[arm]["conversions"] += 1
                truth[arm]["revenue"] += 25.0
    unopened = recommend_request(n=4, num_results=1, defer_activation=True)
    unopened.user_id = next(f"user-{u}" for u in range(40) if in_control(f"user-{u}", 0.5, "planted"))
    last = client.recommender.Recommend(unopened).event_id
    assert 12 <= truth[CONTROL]["users"] <= 28
    wait_until_windows_closed(running, last)

    report = client.admin.GetLearningReport(pb.GetLearningReportRequest())
    campaign = report.campaign
    assert campaign.decisions == 120 and list(campaign.click_labels) == ["click"] and campaign.resamples == 1000
    segments = {(s.channel, s.surface): s for s in campaign.segments}
    assert set(segments) == {(c, s) for c in ("*", "app", "web") for s in ("*", "home")}
    overall = segments[("*", "*")]
    assert [a.arm for a in overall.arms] == [RECBANDIT, CONTROL]
    for got in overall.arms:
        expected = truth[got.arm]
        assert (got.users, got.impressions, got.clicks, got.conversions, got.revenue) == tuple(expected.values())
        assert got.ctr == pytest.approx(expected["clicks"] / expected["impressions"])
        assert got.revenue_per_mille == pytest.approx(1000 * expected["revenue"] / expected["impressions"])
    assert {a.arm: a.clicks for a in segments[("app", "*")].arms} == app
    ctr = next(u for u in overall.uplifts if u.metric == "ctr")
    treated, control = truth[RECBANDIT], truth[CONTROL]
    by_hand = (treated["clicks"] / treated["impressions"]) / (control["clicks"] / control["impressions"]) - 1
    assert ctr.estimate == pytest.approx(by_hand) and by_hand > 1.0  # control users clicked less
    assert 0 < ctr.ci_low < ctr.estimate < ctr.ci_high  # users differ, so the interval is not a point
    conversion = next(u for u in overall.uplifts if u.metric == "conversion_rate")
    assert math.isinf(conversion.estimate) and math.isnan(conversion.ci_low)  # control never bought

    bounded = client.admin.GetLearningReport(pb.GetLearningReportRequest(max_decisions=10)).campaign
    assert bounded.decisions == 10  # the report's limits bound its campaign section too
    assert sum(a.impressions for a in bounded.segments[0].arms) == 10

    assert cli(["report", "--target", f"127.0.0.1:{running.port}", "--out", str(tmp_path / "r.png")]) == 0
    printed = capsys.readouterr().out
    lines = [f"| * | * | {arm} | {truth[arm]['users']} | {truth[arm]['impressions']} |" for arm in truth]
    assert "Campaign: did it pay?" in printed and "| * | * | **uplift** |" in printed
    assert all(line in printed for line in lines)
    assert cli(["campaign-report", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "c.png")]) == 0
    printed = capsys.readouterr().out  # the command reads the whole log alone, and agrees
    assert all(line in printed for line in lines)  # the email never opened is no impression there either
