import datetime

from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_STOREFRONT: _ClassVar[Role]
    ROLE_CATALOG: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]

class RecordStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECORD_STATUS_UNSPECIFIED: _ClassVar[RecordStatus]
    RECORD_STATUS_NEW: _ClassVar[RecordStatus]
    RECORD_STATUS_DUPLICATE: _ClassVar[RecordStatus]

class LearningVerdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARNING_VERDICT_UNSPECIFIED: _ClassVar[LearningVerdict]
    LEARNING_VERDICT_LEARNING: _ClassVar[LearningVerdict]
    LEARNING_VERDICT_NOT_YET_DISTINGUISHABLE: _ClassVar[LearningVerdict]
    LEARNING_VERDICT_WORSE_THAN_RANDOM: _ClassVar[LearningVerdict]
    LEARNING_VERDICT_NO_DATA: _ClassVar[LearningVerdict]
ROLE_UNSPECIFIED: Role
ROLE_STOREFRONT: Role
ROLE_CATALOG: Role
ROLE_ADMIN: Role
RECORD_STATUS_UNSPECIFIED: RecordStatus
RECORD_STATUS_NEW: RecordStatus
RECORD_STATUS_DUPLICATE: RecordStatus
LEARNING_VERDICT_UNSPECIFIED: LearningVerdict
LEARNING_VERDICT_LEARNING: LearningVerdict
LEARNING_VERDICT_NOT_YET_DISTINGUISHABLE: LearningVerdict
LEARNING_VERDICT_WORSE_THAN_RANDOM: LearningVerdict
LEARNING_VERDICT_NO_DATA: LearningVerdict
REQUIRED_ROLE_FIELD_NUMBER: _ClassVar[int]
required_role: _descriptor.FieldDescriptor

class FeatureValue(_message.Message):
    __slots__ = ("string_value", "number_value", "bool_value", "list_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMBER_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    LIST_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    number_value: float
    bool_value: bool
    list_value: StringList
    def __init__(self, string_value: _Optional[str] = ..., number_value: _Optional[float] = ..., bool_value: _Optional[bool] = ..., list_value: _Optional[_Union[StringList, _Mapping]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "features")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    features: _containers.MessageMap[str, FeatureValue]
    def __init__(self, item_id: _Optional[str] = ..., features: _Optional[_Mapping[str, FeatureValue]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "user_features", "context", "candidates", "num_results", "exclude_item_ids", "defer_activation", "event_id")
    class UserFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    NUM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DEFER_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user_features: _containers.MessageMap[str, FeatureValue]
    context: _containers.MessageMap[str, FeatureValue]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    num_results: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    defer_activation: bool
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., user_features: _Optional[_Mapping[str, FeatureValue]] = ..., context: _Optional[_Mapping[str, FeatureValue]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., num_results: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., defer_activation: _Optional[bool] = ..., event_id: _Optional[str] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "probability", "slot")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    probability: float
    slot: int
    def __init__(self, item_id: _Optional[str] = ..., probability: _Optional[float] = ..., slot: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("event_id", "items", "model_version")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    model_version: str
    def __init__(self, event_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("event_id", "item_id", "reward", "label")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    reward: float
    label: str
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., reward: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: RecordStatus
    def __init__(self, status: _Optional[_Union[RecordStatus, str]] = ...) -> None: ...

class ActivateRequest(_message.Message):
    __slots__ = ("event_id",)
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    def __init__(self, event_id: _Optional[str] = ...) -> None: ...

class ActivateResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: RecordStatus
    def __init__(self, status: _Optional[_Union[RecordStatus, str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "features", "active")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FeatureValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FeatureValue, _Mapping]] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    features: _containers.MessageMap[str, FeatureValue]
    active: bool
    def __init__(self, item_id: _Optional[str] = ..., features: _Optional[_Mapping[str, FeatureValue]] = ..., active: _Optional[bool] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "active_only")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    active_only: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., active_only: _Optional[bool] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Exploration(_message.Message):
    __slots__ = ("algorithm", "parameter")
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    algorithm: str
    parameter: float
    def __init__(self, algorithm: _Optional[str] = ..., parameter: _Optional[float] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_version", "examples_learned", "examples_pending", "exploration", "vw_arguments", "last_checkpoint_time", "reward_window_seconds", "default_reward", "reward_aggregation", "embeddings", "registered_policy", "serving_mode")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_LEARNED_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PENDING_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    VW_ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_TIME_FIELD_NUMBER: _ClassVar[int]
    REWARD_WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_REWARD_FIELD_NUMBER: _ClassVar[int]
    REWARD_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_POLICY_FIELD_NUMBER: _ClassVar[int]
    SERVING_MODE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    examples_learned: int
    examples_pending: int
    exploration: Exploration
    vw_arguments: str
    last_checkpoint_time: _timestamp_pb2.Timestamp
    reward_window_seconds: float
    default_reward: float
    reward_aggregation: str
    embeddings: EmbeddingsInfo
    registered_policy: RegisteredPolicy
    serving_mode: ServingMode
    def __init__(self, model_version: _Optional[str] = ..., examples_learned: _Optional[int] = ..., examples_pending: _Optional[int] = ..., exploration: _Optional[_Union[Exploration, _Mapping]] = ..., vw_arguments: _Optional[str] = ..., last_checkpoint_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reward_window_seconds: _Optional[float] = ..., default_reward: _Optional[float] = ..., reward_aggregation: _Optional[str] = ..., embeddings: _Optional[_Union[EmbeddingsInfo, _Mapping]] = ..., registered_policy: _Optional[_Union[RegisteredPolicy, _Mapping]] = ..., serving_mode: _Optional[_Union[ServingMode, _Mapping]] = ...) -> None: ...

class ServingMode(_message.Message):
    __slots__ = ("mode", "since", "reason", "exploration", "until", "apprentice")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    APPRENTICE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    since: _timestamp_pb2.Timestamp
    reason: str
    exploration: float
    until: float
    apprentice: ApprenticeFigures
    def __init__(self, mode: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ..., exploration: _Optional[float] = ..., until: _Optional[float] = ..., apprentice: _Optional[_Union[ApprenticeFigures, _Mapping]] = ...) -> None: ...

class ApprenticeFigures(_message.Message):
    __slots__ = ("slots", "match_rate", "baseline_reward", "model_reward", "identified_share", "window")
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    MATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_REWARD_FIELD_NUMBER: _ClassVar[int]
    MODEL_REWARD_FIELD_NUMBER: _ClassVar[int]
    IDENTIFIED_SHARE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    slots: int
    match_rate: float
    baseline_reward: float
    model_reward: float
    identified_share: float
    window: int
    def __init__(self, slots: _Optional[int] = ..., match_rate: _Optional[float] = ..., baseline_reward: _Optional[float] = ..., model_reward: _Optional[float] = ..., identified_share: _Optional[float] = ..., window: _Optional[int] = ...) -> None: ...

class SetServingModeRequest(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    def __init__(self, mode: _Optional[str] = ...) -> None: ...

class SetServingModeResponse(_message.Message):
    __slots__ = ("changed", "serving_mode")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SERVING_MODE_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    serving_mode: ServingMode
    def __init__(self, changed: _Optional[bool] = ..., serving_mode: _Optional[_Union[ServingMode, _Mapping]] = ...) -> None: ...

class EmbeddingsInfo(_message.Message):
    __slots__ = ("artifact", "trained_time", "items_indexed", "components")
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TIME_FIELD_NUMBER: _ClassVar[int]
    ITEMS_INDEXED_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    artifact: str
    trained_time: _timestamp_pb2.Timestamp
    items_indexed: int
    components: int
    def __init__(self, artifact: _Optional[str] = ..., trained_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., items_indexed: _Optional[int] = ..., components: _Optional[int] = ...) -> None: ...

class RegisteredPolicy(_message.Message):
    __slots__ = ("model_name", "version", "alias")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    alias: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("checkpoint_time", "examples_learned")
    CHECKPOINT_TIME_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_LEARNED_FIELD_NUMBER: _ClassVar[int]
    checkpoint_time: _timestamp_pb2.Timestamp
    examples_learned: int
    def __init__(self, checkpoint_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., examples_learned: _Optional[int] = ...) -> None: ...

class ReloadEmbeddingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadEmbeddingsResponse(_message.Message):
    __slots__ = ("changed", "embeddings")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    embeddings: EmbeddingsInfo
    def __init__(self, changed: _Optional[bool] = ..., embeddings: _Optional[_Union[EmbeddingsInfo, _Mapping]] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("changed", "registered_policy")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_POLICY_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    registered_policy: RegisteredPolicy
    def __init__(self, changed: _Optional[bool] = ..., registered_policy: _Optional[_Union[RegisteredPolicy, _Mapping]] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ("decisions_deleted", "rewards_deleted", "outcomes_deleted", "embedding_removed", "archived_decisions_deleted")
    DECISIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    REWARDS_DELETED_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_DELETED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_REMOVED_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_DECISIONS_DELETED_FIELD_NUMBER: _ClassVar[int]
    decisions_deleted: int
    rewards_deleted: int
    outcomes_deleted: int
    embedding_removed: bool
    archived_decisions_deleted: int
    def __init__(self, decisions_deleted: _Optional[int] = ..., rewards_deleted: _Optional[int] = ..., outcomes_deleted: _Optional[int] = ..., embedding_removed: _Optional[bool] = ..., archived_decisions_deleted: _Optional[int] = ...) -> None: ...

class GetLearningReportRequest(_message.Message):
    __slots__ = ("window_seconds", "max_decisions")
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DECISIONS_FIELD_NUMBER: _ClassVar[int]
    window_seconds: float
    max_decisions: int
    def __init__(self, window_seconds: _Optional[float] = ..., max_decisions: _Optional[int] = ...) -> None: ...

class PolicyEstimate(_message.Message):
    __slots__ = ("policy", "estimator", "value", "ci_low", "ci_high", "effective_sample_size")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ESTIMATOR_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_SAMPLE_SIZE_FIELD_NUMBER: _ClassVar[int]
    policy: str
    estimator: str
    value: float
    ci_low: float
    ci_high: float
    effective_sample_size: float
    def __init__(self, policy: _Optional[str] = ..., estimator: _Optional[str] = ..., value: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., effective_sample_size: _Optional[float] = ...) -> None: ...

class ModelVersionReport(_message.Message):
    __slots__ = ("model_version", "decisions", "observed_reward", "observed_ci_low", "observed_ci_high", "estimates", "lift_over_random", "lift_ci_low", "lift_ci_high", "verdict", "summary", "more_decisions_needed")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_REWARD_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    ESTIMATES_FIELD_NUMBER: _ClassVar[int]
    LIFT_OVER_RANDOM_FIELD_NUMBER: _ClassVar[int]
    LIFT_CI_LOW_FIELD_NUMBER: _ClassVar[int]
    LIFT_CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    MORE_DECISIONS_NEEDED_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    decisions: int
    observed_reward: float
    observed_ci_low: float
    observed_ci_high: float
    estimates: _containers.RepeatedCompositeFieldContainer[PolicyEstimate]
    lift_over_random: float
    lift_ci_low: float
    lift_ci_high: float
    verdict: LearningVerdict
    summary: str
    more_decisions_needed: int
    def __init__(self, model_version: _Optional[str] = ..., decisions: _Optional[int] = ..., observed_reward: _Optional[float] = ..., observed_ci_low: _Optional[float] = ..., observed_ci_high: _Optional[float] = ..., estimates: _Optional[_Iterable[_Union[PolicyEstimate, _Mapping]]] = ..., lift_over_random: _Optional[float] = ..., lift_ci_low: _Optional[float] = ..., lift_ci_high: _Optional[float] = ..., verdict: _Optional[_Union[LearningVerdict, str]] = ..., summary: _Optional[str] = ..., more_decisions_needed: _Optional[int] = ...) -> None: ...

class GetLearningReportResponse(_message.Message):
    __slots__ = ("window_start", "window_end", "overall", "versions", "model_version", "campaign")
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    WINDOW_END_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    window_start: _timestamp_pb2.Timestamp
    window_end: _timestamp_pb2.Timestamp
    overall: ModelVersionReport
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersionReport]
    model_version: str
    campaign: CampaignResults
    def __init__(self, window_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., window_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., overall: _Optional[_Union[ModelVersionReport, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[ModelVersionReport, _Mapping]]] = ..., model_version: _Optional[str] = ..., campaign: _Optional[_Union[CampaignResults, _Mapping]] = ...) -> None: ...

class CampaignResults(_message.Message):
    __slots__ = ("decisions", "click_labels", "purchase_labels", "resamples", "segments", "notes")
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    CLICK_LABELS_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_LABELS_FIELD_NUMBER: _ClassVar[int]
    RESAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    decisions: int
    click_labels: _containers.RepeatedScalarFieldContainer[str]
    purchase_labels: _containers.RepeatedScalarFieldContainer[str]
    resamples: int
    segments: _containers.RepeatedCompositeFieldContainer[CampaignSegment]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, decisions: _Optional[int] = ..., click_labels: _Optional[_Iterable[str]] = ..., purchase_labels: _Optional[_Iterable[str]] = ..., resamples: _Optional[int] = ..., segments: _Optional[_Iterable[_Union[CampaignSegment, _Mapping]]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class CampaignSegment(_message.Message):
    __slots__ = ("channel", "surface", "arms", "uplifts")
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    UPLIFTS_FIELD_NUMBER: _ClassVar[int]
    channel: str
    surface: str
    arms: _containers.RepeatedCompositeFieldContainer[CampaignArm]
    uplifts: _containers.RepeatedCompositeFieldContainer[CampaignUplift]
    def __init__(self, channel: _Optional[str] = ..., surface: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[CampaignArm, _Mapping]]] = ..., uplifts: _Optional[_Iterable[_Union[CampaignUplift, _Mapping]]] = ...) -> None: ...

class CampaignArm(_message.Message):
    __slots__ = ("arm", "users", "impressions", "clicks", "conversions", "revenue", "ctr", "conversion_rate", "revenue_per_mille")
    ARM_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    CONVERSIONS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    CTR_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_PER_MILLE_FIELD_NUMBER: _ClassVar[int]
    arm: str
    users: int
    impressions: int
    clicks: int
    conversions: int
    revenue: float
    ctr: float
    conversion_rate: float
    revenue_per_mille: float
    def __init__(self, arm: _Optional[str] = ..., users: _Optional[int] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., conversions: _Optional[int] = ..., revenue: _Optional[float] = ..., ctr: _Optional[float] = ..., conversion_rate: _Optional[float] = ..., revenue_per_mille: _Optional[float] = ...) -> None: ...

class CampaignUplift(_message.Message):
    __slots__ = ("metric", "estimate", "ci_low", "ci_high")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    metric: str
    estimate: float
    ci_low: float
    ci_high: float
    def __init__(self, metric: _Optional[str] = ..., estimate: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("event_id", "item_id", "max_features")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURES_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    max_features: int
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., max_features: _Optional[int] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("feature", "value", "weight", "contribution")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    feature: str
    value: float
    weight: float
    contribution: float
    def __init__(self, feature: _Optional[str] = ..., value: _Optional[float] = ..., weight: _Optional[float] = ..., contribution: _Optional[float] = ...) -> None: ...

class ItemProbability(_message.Message):
    __slots__ = ("item_id", "probability")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    probability: float
    def __init__(self, item_id: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("event_id", "item_id", "slot", "model_version", "pmf", "probability", "score", "explaining_model_version", "contributions")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PMF_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPLAINING_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    item_id: str
    slot: int
    model_version: str
    pmf: _containers.RepeatedCompositeFieldContainer[ItemProbability]
    probability: float
    score: float
    explaining_model_version: str
    contributions: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    def __init__(self, event_id: _Optional[str] = ..., item_id: _Optional[str] = ..., slot: _Optional[int] = ..., model_version: _Optional[str] = ..., pmf: _Optional[_Iterable[_Union[ItemProbability, _Mapping]]] = ..., probability: _Optional[float] = ..., score: _Optional[float] = ..., explaining_model_version: _Optional[str] = ..., contributions: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ...) -> None: ...

class GetRulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRulesResponse(_message.Message):
    __slots__ = ("file", "loaded_time", "rules", "last_error", "last_error_time")
    FILE_FIELD_NUMBER: _ClassVar[int]
    LOADED_TIME_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    file: str
    loaded_time: _timestamp_pb2.Timestamp
    rules: _containers.RepeatedCompositeFieldContainer[Rule]
    last_error: str
    last_error_time: _timestamp_pb2.Timestamp
    def __init__(self, file: _Optional[str] = ..., loaded_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rules: _Optional[_Iterable[_Union[Rule, _Mapping]]] = ..., last_error: _Optional[str] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Rule(_message.Message):
    __slots__ = ("name", "eligibility", "frequency_cap", "promotion_share", "pin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ELIGIBILITY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_CAP_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_SHARE_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    eligibility: EligibilityRule
    frequency_cap: FrequencyCapRule
    promotion_share: PromotionShareRule
    pin: PinRule
    def __init__(self, name: _Optional[str] = ..., eligibility: _Optional[_Union[EligibilityRule, _Mapping]] = ..., frequency_cap: _Optional[_Union[FrequencyCapRule, _Mapping]] = ..., promotion_share: _Optional[_Union[PromotionShareRule, _Mapping]] = ..., pin: _Optional[_Union[PinRule, _Mapping]] = ...) -> None: ...

class FeatureCondition(_message.Message):
    __slots__ = ("feature", "values")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    feature: str
    values: _containers.RepeatedCompositeFieldContainer[FeatureValue]
    def __init__(self, feature: _Optional[str] = ..., values: _Optional[_Iterable[_Union[FeatureValue, _Mapping]]] = ...) -> None: ...

class EligibilityRule(_message.Message):
    __slots__ = ("items", "context", "user")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    context: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    user: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    def __init__(self, items: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ..., context: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ..., user: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ...) -> None: ...

class FrequencyCapRule(_message.Message):
    __slots__ = ("items", "per", "max", "window_seconds")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PER_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    per: str
    max: int
    window_seconds: float
    def __init__(self, items: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ..., per: _Optional[str] = ..., max: _Optional[int] = ..., window_seconds: _Optional[float] = ...) -> None: ...

class PromotionShareRule(_message.Message):
    __slots__ = ("items", "share", "slot", "context", "user")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    share: float
    slot: int
    context: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    user: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    def __init__(self, items: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ..., share: _Optional[float] = ..., slot: _Optional[int] = ..., context: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ..., user: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ...) -> None: ...

class PinRule(_message.Message):
    __slots__ = ("item_id", "slot", "context", "user")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    slot: int
    context: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    user: _containers.RepeatedCompositeFieldContainer[FeatureCondition]
    def __init__(self, item_id: _Optional[str] = ..., slot: _Optional[int] = ..., context: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ..., user: _Optional[_Iterable[_Union[FeatureCondition, _Mapping]]] = ...) -> None: ...
