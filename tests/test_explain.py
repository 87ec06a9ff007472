"""Admin/Explain against a real server: a planted reward rule comes back as the top contribution."""

from __future__ import annotations

import math

import grpc
import pytest

from engine.explain import Explanation, FeatureContribution, audit, audit_arguments
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.converters import explanation_to_proto
from server.wire import features_to_proto

CATEGORIES = ["shoes", "hats", "bags", "socks", "hats", "shoes", "caps", "bags", "socks", "caps"]
PLANTED = "User^segment=vip*Item^category=shoes"


def request(user: int, **fields: object) -> pb.RecommendRequest:
    message = pb.RecommendRequest(user_id=f"user-{user}", **fields)  # type: ignore[arg-type]
    features_to_proto({"segment": "vip" if user % 2 else "regular"}, message.user_features)
    features_to_proto({"channel": "app"}, message.context)
    for j, category in enumerate(CATEGORIES):
        candidate = message.candidates.add(item_id=f"sku-{j}")
        features_to_proto({"category": category}, candidate.features)
    return message


def reward(user: int, item_id: str) -> float:
    """The planted rule: a vip buys shoes, nobody buys anything else."""
    return 1.0 if user % 2 and CATEGORIES[int(item_id.split("-")[1])] == "shoes" else 0.0


def train(client, events: int) -> list[pb.RecommendResponse]:  # type: ignore[no-untyped-def]
    answers = []
    for n in range(events):
        answer = client.recommender.Recommend(request(n, event_id=f"train-{n}"))
        item_id = answer.items[0].item_id
        client.recommender.Feedback(pb.FeedbackRequest(event_id=answer.event_id, item_id=item_id,
                                                       reward=reward(n, item_id)))
        answers.append(answer)
    return answers


def error_of(call, message):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        call(message)
    return error.value.code(), error.value.details()


def test_explain_names_the_planted_interaction_with_the_logged_pmf(start_server) -> None:  # type: ignore[no-untyped-def]
    """Uniform exploration half of the time: vips are also shown other items, else ``segment=vip``
    and the interaction would hardly differ in the data (both mean "a vip was shown shoes")."""
    running, client = start_server(seed=3, exploration="epsilon", exploration_parameter=0.5)
    first = train(client, 300)[0]
    assert running.engine.wait_until_learned(timeout=20)
    answer = client.recommender.Recommend(request(1, event_id="why", num_results=2))

    why = client.admin.Explain(pb.ExplainRequest(event_id="why", item_id="sku-5", max_features=5))
    top = why.contributions[0]
    assert top.feature == PLANTED, [c.feature for c in why.contributions]
    assert top.value == 1.0 and top.weight < 0 and top.contribution == top.weight  # cost −1: reward +1
    sizes = [abs(c.contribution) for c in why.contributions]
    assert len(sizes) == 5 and sizes == sorted(sizes, reverse=True)
    assert why.score < 0  # the expected cost of shoes for a vip: a sale

    logged = running.engine.log.get_decision("why")
    slot = next((k for k, item in enumerate(answer.items) if item.item_id == "sku-5"), -1)
    assert why.slot == slot
    assert [(p.item_id, p.probability) for p in why.pmf] == [
        (c.item_id, p) for c, p in zip(logged.candidates, logged.slots[max(slot, 0)].pmf, strict=True)]
    assert math.fsum(p.probability for p in why.pmf) == pytest.approx(1.0)
    assert why.model_version == answer.model_version
    assert why.explaining_model_version == client.admin.GetModelInfo(pb.GetModelInfoRequest()).model_version

    chosen = client.admin.Explain(pb.ExplainRequest(event_id="why"))  # slot 0's item, 10 features
    assert chosen.item_id == answer.items[0].item_id and chosen.slot == 0
    assert chosen.probability == answer.items[0].probability
    assert {p.item_id: p.probability for p in chosen.pmf}[chosen.item_id] == answer.items[0].probability
    assert len(chosen.contributions) == 10

    early = client.admin.Explain(pb.ExplainRequest(event_id=first.event_id))  # decided by the untrained model
    assert early.model_version == first.model_version and first.model_version.endswith("@0")
    assert early.explaining_model_version == why.explaining_model_version
    assert early.probability == first.items[0].probability


def test_contributions_add_up_to_vws_own_score() -> None:
    """The audit's features and the live weights give VW's prediction (single-action example)."""
    from engine.bandit import BanditConfig, VWBandit

    bandit = VWBandit(BanditConfig(exploration="epsilon"))
    shared, action = "shared |User segment=vip age:31.5 |Context channel=app", "|Item id=a category=shoes price:12.5"
    for _ in range(50):
        bandit.learn(shared, [action, "|Item id=b category=hats"], 0, 1.0, 0.5)
    features = audit(bandit.arguments, f"{shared}\n{action}")
    names = {f.name for f in features}
    assert {PLANTED, "User^age*Item^price", "Context^channel=app*Item^id=a", "Constant"} <= names
    assert next(f.value for f in features if f.name == "User^age*Item^price") == pytest.approx(31.5 * 12.5)
    weights = bandit.weights([f.index for f in features])
    vw = bandit._vw
    examples = vw.parse([shared, action])
    vw.predict(examples)
    assert math.fsum(f.value * w for f, w in zip(features, weights, strict=True)) == pytest.approx(
        examples[1].get_partial_prediction(), abs=1e-4)
    vw.finish_example(examples)
    bandit.close()


def test_explanation_converts_to_the_proto_field_by_field() -> None:
    explanation = Explanation("e1", "sku-5", 0, "vw-1@0", (("sku-0", 0.25), ("sku-5", 0.75)), 0.75, -0.5, "vw-1@9",
                              (FeatureContribution(PLANTED, 1.0, -0.25, -0.25),))
    assert explanation_to_proto(explanation) == pb.ExplainResponse(
        event_id="e1", item_id="sku-5", slot=0, model_version="vw-1@0",
        pmf=[pb.ItemProbability(item_id="sku-0", probability=0.25), pb.ItemProbability(item_id="sku-5", probability=0.75)],
        probability=0.75, score=-0.5, explaining_model_version="vw-1@9",
        contributions=[pb.FeatureContribution(feature=PLANTED, value=1.0, weight=-0.25, contribution=-0.25)])


def test_audit_arguments_read_and_write_no_file() -> None:
    assert audit_arguments("--cb_explore_adf --initial_regressor /m.vw -b 18 -q UI --quiet") == (
        "--cb_explore_adf -b 18 -q UI --quiet --sparse_weights --testonly --audit")


def test_explain_refuses_unknown_events_and_items_and_bad_sizes(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    client.recommender.Recommend(request(1, event_id="e1"))
    explain = client.admin.Explain
    assert error_of(explain, pb.ExplainRequest(event_id="nope")) == (
        grpc.StatusCode.NOT_FOUND, "event_id: no decision with event_id 'nope'")
    assert error_of(explain, pb.ExplainRequest(event_id="e1", item_id="sku-99")) == (
        grpc.StatusCode.NOT_FOUND, "item_id: 'sku-99' was not a candidate of event 'e1'")
    for size in (-1, 101):
        assert error_of(explain, pb.ExplainRequest(event_id="e1", max_features=size)) == (
            grpc.StatusCode.INVALID_ARGUMENT, f"max_features: must be from 0 to 100 (0 means 10), got {size}")
    assert error_of(explain, pb.ExplainRequest()) == (grpc.StatusCode.INVALID_ARGUMENT, "event_id: must not be empty")
    # all it has: Key 1 (id), Item 1 (category), Constant, User 1, Context 3 (channel, daypart, weekend),
    # Time 2 (hour, weekday: never crossed), C×I 3, U×I 1
    assert len(explain(pb.ExplainRequest(event_id="e1", max_features=100)).contributions) == 13
    assert len(explain(pb.ExplainRequest(event_id="e1", max_features=1)).contributions) == 1


def test_names_with_any_line_break_are_explained_and_huge_examples_refused_before_the_audit(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    odd = pb.RecommendRequest(user_id="u1", event_id="odd", candidates=[pb.Candidate(item_id="sku\x85a"),
                                                                        pb.Candidate(item_id="b")])
    features_to_proto({"k\x1c": "x\u2028y", "tier\x0b": "gold"}, odd.user_features)
    client.recommender.Recommend(odd)
    why = client.admin.Explain(pb.ExplainRequest(event_id="odd", item_id="sku\x85a", max_features=100))
    assert any("\x1c" in c.feature for c in why.contributions) and why.pmf[0].item_id == "sku\x85a"
    huge = pb.RecommendRequest(user_id="u1", event_id="huge", candidates=[pb.Candidate(item_id="a")])
    features_to_proto({f"f{i}": [f"v{j}" for j in range(64)] for i in range(10)}, huge.user_features)
    features_to_proto({f"g{i}": [f"w{j}" for j in range(64)] for i in range(10)}, huge.candidates[0].features)
    client.recommender.Recommend(huge)  # 640 × 640 tokens: 409,600 interactions
    code, details = error_of(client.admin.Explain, pb.ExplainRequest(event_id="huge"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("event_id: its example has up to ") and details.endswith("Explain audits at most 200,000")


def test_explain_with_pseudonymous_user_ids_reveals_no_raw_id(start_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "user-id.key"
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    running, client = start_server(pseudonymize_user_ids=str(key))
    client.recommender.Recommend(request(1, event_id="e1"))
    why = client.admin.Explain(pb.ExplainRequest(event_id="e1"))
    assert running.engine.log.get_decision("e1").user_id != "user-1"
    assert b"user-1" not in why.SerializeToString() and why.contributions
