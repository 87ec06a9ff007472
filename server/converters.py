"""Pure conversions between protobuf messages and engine values, in to_domain / to_proto pairs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from engine.cache import BoundedCache
from engine.core import ForgottenUser, ModelInfo, RegisteredPolicy
from engine.errors import InvalidRequest, shown
from engine.features import frozen_features
from engine.records import LoggedDecision
from engine.retrieval import EmbeddingsInfo
from engine.types import Candidate, DecisionRequest, Features, FeatureValue, Item, RewardReport, Status
from engine.validation import Limits, check_count, check_features, check_id
from server._proto.recbandit.v1 import recbandit_pb2 as pb


def features_to_domain(field: str, features: Mapping[str, pb.FeatureValue]) -> dict[str, FeatureValue]:
    out: dict[str, FeatureValue] = {}
    for name, value in features.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[name] = value.string_value
        elif kind == "number_value":
            out[name] = value.number_value
        elif kind == "bool_value":
            out[name] = value.bool_value
        elif kind == "list_value":
            out[name] = tuple(value.list_value.values)
        else:
            raise InvalidRequest(
                f"{field}[{shown(name)}]", "must set one of string_value, number_value, bool_value, list_value"
            )
    return out


def features_to_proto(features: Features, target: MutableMapping[str, pb.FeatureValue]) -> None:
    for name, value in features.items():
        if isinstance(value, bool):
            target[name].bool_value = value
        elif isinstance(value, float | int):
            target[name].number_value = value
        elif isinstance(value, str):
            target[name].string_value = value
        else:
            target[name].list_value.values.extend(value)


_candidates: BoundedCache[bytes, Candidate] = BoundedCache(max_entries=1 << 15, max_bytes=32 << 20)
"""Request candidates converted once, found again by their wire bytes (equal bytes always parse to an
equal message): storefronts send the same items with the same features again and again. Only
candidates that passed every limit are kept; an entry costs about three times its key."""


def candidate_to_domain(field: str, candidate: pb.Candidate, limits: Limits, key: bytes | None = None) -> Candidate:
    """A request's candidate with read-only features, checked against ``limits`` before it is kept.

    Its features are a read-only view, which lets the engine keep its encoded forms too.
    """
    check_id(f"{field}.item_id", candidate.item_id, limits)
    check_count(f"{field}.features", len(candidate.features), limits.max_features)
    features = features_to_domain(f"{field}.features", candidate.features)
    check_features(f"{field}.features", features, limits)
    found = Candidate(candidate.item_id, frozen_features(features))
    key = candidate.SerializeToString() if key is None else key
    _candidates.put(key, found, 3 * len(key))
    return found


def _candidates_to_domain(candidates: Iterable[pb.Candidate], limits: Limits) -> tuple[Candidate, ...]:
    out = []
    get = _candidates.get
    for c in candidates:
        key = c.SerializeToString()
        found = get(key)
        out.append(found if found is not None else candidate_to_domain(f"candidates[{len(out)}]", c, limits, key))
    return tuple(out)


def decision_work(request: pb.RecommendRequest) -> int:
    """What converting and deciding a Recommend costs, in rough units: its feature values (converted
    and encoded once) plus candidates times slots (each slot scores the candidates left)."""
    features = len(request.user_features) + len(request.context) + sum(len(c.features) for c in request.candidates)
    return features + len(request.candidates) * max(1, request.num_results)


def recommend_request_to_domain(request: pb.RecommendRequest, limits: Limits) -> DecisionRequest:
    """The request as the engine takes it, once :func:`~engine.validation.check_decision_sizes` passed
    on the raw message: every candidate is checked against ``limits`` before the cache keeps it."""
    return DecisionRequest(
        user_id=request.user_id,
        user_features=features_to_domain("user_features", request.user_features),
        context=features_to_domain("context", request.context),
        candidates=_candidates_to_domain(request.candidates, limits),
        num_results=request.num_results,
        exclude_item_ids=tuple(request.exclude_item_ids),
        defer_activation=request.defer_activation,
        event_id=request.event_id,
    )


def decision_to_proto(decision: LoggedDecision) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        event_id=decision.event_id,
        items=[
            pb.RankedItem(item_id=s.item_id, probability=s.probability, slot=i) for i, s in enumerate(decision.slots)
        ],
        model_version=decision.model_version,
    )


def feedback_request_to_domain(request: pb.FeedbackRequest) -> RewardReport:
    return RewardReport(event_id=request.event_id, reward=request.reward, item_id=request.item_id, label=request.label)


def record_status_to_proto(status: Status) -> pb.RecordStatus.ValueType:
    return pb.RecordStatus.Value("RECORD_STATUS_" + status.name)


def feedback_status_to_proto(status: Status) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(status=record_status_to_proto(status))


def activate_status_to_proto(status: Status) -> pb.ActivateResponse:
    return pb.ActivateResponse(status=record_status_to_proto(status))


def items_to_domain(items: Sequence[pb.Item], limits: Limits) -> list[Item]:
    """UpsertItems' items, their count checked on the raw message first."""
    check_count("items", len(items), limits.max_items_per_call)
    return [item_to_domain(f"items[{i}]", item) for i, item in enumerate(items)]


def item_to_domain(field: str, item: pb.Item) -> Item:
    return Item(item.item_id, features_to_domain(f"{field}.features", item.features), item.active)


def item_to_proto(item: Item) -> pb.Item:
    message = pb.Item(item_id=item.item_id, active=item.active)
    features_to_proto(item.features, message.features)
    return message


def timestamp(ts: float | None) -> Timestamp | None:
    if ts is None:
        return None
    message = Timestamp()
    message.FromNanoseconds(int(ts * 1e9))
    return message


def model_info_to_proto(info: ModelInfo) -> pb.GetModelInfoResponse:
    return pb.GetModelInfoResponse(
        model_version=info.model_version,
        examples_learned=info.examples_learned,
        examples_pending=info.examples_pending,
        exploration=pb.Exploration(algorithm=info.bandit.exploration, parameter=info.bandit.parameter),
        vw_arguments=info.vw_arguments,
        last_checkpoint_time=timestamp(info.last_checkpoint_ts),
        reward_window_seconds=info.rewards.window_seconds,
        default_reward=info.rewards.default_reward,
        reward_aggregation=info.rewards.aggregation.value,
        embeddings=embeddings_info_to_proto(info.embeddings),
        registered_policy=registered_policy_to_proto(info.registered_policy),
    )


def embeddings_info_to_proto(info: EmbeddingsInfo | None) -> pb.EmbeddingsInfo | None:
    if info is None:
        return None
    return pb.EmbeddingsInfo(artifact=info.artifact, trained_time=timestamp(info.trained_ts),
                             items_indexed=info.items_indexed, components=info.components)


def registered_policy_to_proto(policy: RegisteredPolicy | None) -> pb.RegisteredPolicy | None:
    if policy is None:
        return None
    return pb.RegisteredPolicy(model_name=policy.model_name, version=policy.version, alias=policy.alias)


def forgotten_user_to_proto(forgotten: ForgottenUser) -> pb.ForgetUserResponse:
    return pb.ForgetUserResponse(
        decisions_deleted=len(forgotten.log.event_ids),
        rewards_deleted=forgotten.log.rewards,
        outcomes_deleted=forgotten.log.outcomes,
        embedding_removed=forgotten.embedding_removed,
    )
