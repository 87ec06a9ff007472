"""Pure conversions between protobuf messages and engine values, in to_domain / to_proto pairs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from engine.cache import BoundedCache
from engine.campaign import CONTROL, RECBANDIT, ArmCounts, CampaignReport, SegmentResult, Uplift
from engine.apprentice import ApprenticeConfig, ApprenticeStats, ServingMode
from engine.core import ForgottenUser, ModelInfo, RegisteredPolicy
from engine.explain import Explanation, FeatureContribution
from engine.liverules import RulesInfo
from engine.features import frozen_features
from engine.records import LoggedDecision
from engine.ope import Estimate
from engine.report import LearningReport, PolicyValue, ReportRequest, Verdict, VersionReport
from engine.retrieval import EmbeddingsInfo
from engine.rules import Condition, Eligibility, FrequencyCap, Match, Pin, PromotionShare, Rule, RuleSet
from engine.types import Candidate, DecisionRequest, Item, RewardReport, Status
from engine.validation import Limits, check_count, check_features, check_id
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.wire import features_to_domain, item_to_domain, record_status_to_proto


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


def feedback_status_to_proto(status: Status) -> pb.FeedbackResponse:
    return pb.FeedbackResponse(status=record_status_to_proto(status))


def activate_status_to_proto(status: Status) -> pb.ActivateResponse:
    return pb.ActivateResponse(status=record_status_to_proto(status))


def items_to_domain(items: Sequence[pb.Item], limits: Limits) -> list[Item]:
    """UpsertItems' items, their count checked on the raw message first."""
    check_count("items", len(items), limits.max_items_per_call)
    return [item_to_domain(f"items[{i}]", item) for i, item in enumerate(items)]


def timestamp(ts: float | None) -> Timestamp | None:
    if ts is None:
        return None
    message = Timestamp()
    message.FromNanoseconds(int(ts * 1e9))
    return message


def model_info_to_proto(info: ModelInfo, apprentice: ApprenticeConfig | None = None) -> pb.GetModelInfoResponse:
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
        serving_mode=serving_mode_to_proto(info.serving_mode, info.apprentice, apprentice),
    )


def serving_mode_to_proto(mode: ServingMode, stats: ApprenticeStats | None = None,
                          config: ApprenticeConfig | None = None) -> pb.ServingMode:
    """The mode in force, with this process's apprentice settings and figures (when it tallies them)."""
    config = config or ApprenticeConfig()
    figures = None if stats is None else pb.ApprenticeFigures(
        slots=stats.slots, match_rate=stats.match_rate, baseline_reward=stats.baseline_reward,
        model_reward=stats.model_reward, identified_share=stats.identified_share, window=config.window)
    return pb.ServingMode(mode=mode.mode, since=timestamp(mode.since or None), reason=mode.reason,
                          exploration=config.exploration, until=config.until or 0.0, apprentice=figures)


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
        archived_decisions_deleted=forgotten.archived,
    )


def explanation_to_proto(explanation: Explanation) -> pb.ExplainResponse:
    return pb.ExplainResponse(
        event_id=explanation.event_id,
        item_id=explanation.item_id,
        slot=explanation.slot,
        model_version=explanation.model_version,
        pmf=[pb.ItemProbability(item_id=item_id, probability=p) for item_id, p in explanation.pmf],
        probability=explanation.probability,
        score=explanation.score,
        explaining_model_version=explanation.explaining_model_version,
        contributions=[
            pb.FeatureContribution(feature=c.feature, value=c.value, weight=c.weight, contribution=c.contribution)
            for c in explanation.contributions
        ],
    )


def explanation_to_domain(message: pb.ExplainResponse) -> Explanation:
    return Explanation(
        event_id=message.event_id,
        item_id=message.item_id,
        slot=message.slot,
        model_version=message.model_version,
        pmf=tuple((p.item_id, p.probability) for p in message.pmf),
        probability=message.probability,
        score=message.score,
        explaining_model_version=message.explaining_model_version,
        contributions=tuple(FeatureContribution(c.feature, c.value, c.weight, c.contribution)
                            for c in message.contributions),
    )


def report_request_to_domain(request: pb.GetLearningReportRequest) -> ReportRequest:
    return ReportRequest(window_seconds=request.window_seconds, max_decisions=request.max_decisions)


def learning_report_to_proto(report: LearningReport) -> pb.GetLearningReportResponse:
    return pb.GetLearningReportResponse(
        window_start=timestamp(report.window_start),
        window_end=timestamp(report.window_end),
        overall=version_report_to_proto(report.overall),
        versions=[version_report_to_proto(v) for v in report.versions],
        model_version=report.model_version,
        campaign=None if report.campaign is None else campaign_to_proto(report.campaign),
    )


def version_report_to_proto(version: VersionReport) -> pb.ModelVersionReport:
    message = pb.ModelVersionReport(
        model_version=version.model_version,
        decisions=version.decisions,
        estimates=[
            pb.PolicyEstimate(policy=e.policy, estimator=e.estimator, value=e.estimate.value,
                              ci_low=e.estimate.ci_low, ci_high=e.estimate.ci_high,
                              effective_sample_size=e.estimate.ess)
            for e in version.estimates
        ],
        verdict=pb.LearningVerdict.Value("LEARNING_VERDICT_" + version.verdict.name),
        summary=version.summary,
        more_decisions_needed=version.more_decisions_needed,
    )
    if version.observed is not None:
        message.observed_reward = version.observed.value
        message.observed_ci_low, message.observed_ci_high = version.observed.ci_low, version.observed.ci_high
    if version.lift is not None:
        message.lift_over_random = version.lift.value
        message.lift_ci_low, message.lift_ci_high = version.lift.ci_low, version.lift.ci_high
    return message


def learning_report_to_domain(message: pb.GetLearningReportResponse) -> LearningReport:
    return LearningReport(
        window_start=message.window_start.ToNanoseconds() / 1e9,
        window_end=message.window_end.ToNanoseconds() / 1e9,
        overall=version_report_to_domain(message.overall),
        versions=tuple(version_report_to_domain(v) for v in message.versions),
        model_version=message.model_version,
        campaign=campaign_to_domain(message.campaign) if message.HasField("campaign") else None,
    )


def campaign_to_proto(report: CampaignReport) -> pb.CampaignResults:
    return pb.CampaignResults(
        decisions=report.decisions,
        click_labels=report.click_labels,
        purchase_labels=report.purchase_labels,
        resamples=report.resamples,
        segments=[campaign_segment_to_proto(s) for s in report.segments],
        notes=report.notes,
    )


def campaign_segment_to_proto(segment: SegmentResult) -> pb.CampaignSegment:
    """The arms in the order recbandit, control, then any other (sorted)."""
    order = [RECBANDIT, CONTROL, *sorted(set(segment.arms) - {RECBANDIT, CONTROL})]
    return pb.CampaignSegment(
        channel=segment.channel,
        surface=segment.surface,
        arms=[pb.CampaignArm(arm=arm, users=c.users, impressions=c.impressions, clicks=c.clicks,
                             conversions=c.conversions, revenue=c.revenue, ctr=c.metric("ctr"),
                             conversion_rate=c.metric("conversion_rate"),
                             revenue_per_mille=c.metric("revenue_per_mille"))
              for arm in order if (c := segment.arms.get(arm)) is not None],
        uplifts=[pb.CampaignUplift(metric=u.metric, estimate=u.estimate, ci_low=u.low, ci_high=u.high)
                 for u in segment.uplifts],
    )


def campaign_to_domain(message: pb.CampaignResults) -> CampaignReport:
    """The inverse of :func:`campaign_to_proto` (each arm's metrics follow from its counts)."""
    segments = tuple(
        SegmentResult(
            s.channel, s.surface,
            {a.arm: ArmCounts(a.impressions, a.clicks, a.conversions, a.revenue, a.users) for a in s.arms},
            tuple(Uplift(u.metric, u.estimate, u.ci_low, u.ci_high) for u in s.uplifts),
        )
        for s in message.segments
    )
    return CampaignReport(segments, message.decisions, tuple(message.click_labels), tuple(message.purchase_labels),
                          message.resamples, tuple(message.notes))


def version_report_to_domain(message: pb.ModelVersionReport) -> VersionReport:
    """The inverse of :func:`version_report_to_proto`: no observed reward or lift without data; the
    observed reward's effective sample size is its decisions (every weight is 1)."""
    verdict = Verdict[pb.LearningVerdict.Name(message.verdict).removeprefix("LEARNING_VERDICT_")]
    data = verdict is not Verdict.NO_DATA
    n = message.decisions
    return VersionReport(
        model_version=message.model_version,
        decisions=n,
        observed=Estimate(message.observed_reward, message.observed_ci_low, message.observed_ci_high, n, n)
        if data else None,
        estimates=tuple(PolicyValue(e.policy, e.estimator, Estimate(e.value, e.ci_low, e.ci_high,
                                                                    e.effective_sample_size, n))
                        for e in message.estimates),
        lift=Estimate(message.lift_over_random, message.lift_ci_low, message.lift_ci_high, math.nan, n)
        if data else None,  # the lift's effective sample size is not sent
        verdict=verdict,
        summary=message.summary,
        more_decisions_needed=message.more_decisions_needed,
    )


def rules_info_to_proto(info: RulesInfo) -> pb.GetRulesResponse:
    return pb.GetRulesResponse(
        file=info.file,
        loaded_time=timestamp(info.loaded_ts),
        rules=[rule_to_proto(rule) for rule in info.rules.rules],
        last_error=info.last_error,
        last_error_time=timestamp(info.last_error_ts),
    )


def rule_to_proto(rule: Rule) -> pb.Rule:
    match rule:
        case Eligibility():
            return pb.Rule(name=rule.name, eligibility=pb.EligibilityRule(
                items=_conditions(rule.items), context=_conditions(rule.context), user=_conditions(rule.user)))
        case FrequencyCap():
            return pb.Rule(name=rule.name, frequency_cap=pb.FrequencyCapRule(
                items=_conditions(rule.items), per=rule.per, max=rule.max, window_seconds=rule.window_seconds))
        case PromotionShare():
            return pb.Rule(name=rule.name, promotion_share=pb.PromotionShareRule(
                items=_conditions(rule.items), share=rule.share, slot=rule.slot, context=_conditions(rule.context),
                user=_conditions(rule.user)))
        case Pin():
            return pb.Rule(name=rule.name, pin=pb.PinRule(
                item_id=rule.item_id, slot=rule.slot, context=_conditions(rule.context), user=_conditions(rule.user)))
    raise TypeError(f"not a rule: {type(rule).__name__}")


def _conditions(match: Match) -> list[pb.FeatureCondition]:
    out = []
    for condition in match:
        message = pb.FeatureCondition(feature=condition.feature)
        for value in condition.values:
            if isinstance(value, bool):
                message.values.add(bool_value=value)
            elif isinstance(value, str):
                message.values.add(string_value=value)
            else:
                message.values.add(number_value=value)
        out.append(message)
    return out


def rules_info_to_domain(message: pb.GetRulesResponse) -> RulesInfo:
    """The inverse of :func:`rules_info_to_proto`."""
    kinds: dict[str, list[Rule]] = {"eligibility": [], "frequency_cap": [], "promotion_share": [], "pin": []}
    for rule in message.rules:
        kind = rule.WhichOneof("kind")
        if kind is not None:
            kinds[kind].append(rule_to_domain(rule))
    return RulesInfo(
        file=message.file,
        rules=RuleSet(*(tuple(rules) for rules in kinds.values())),  # type: ignore[arg-type]
        loaded_ts=message.loaded_time.ToNanoseconds() / 1e9 if message.HasField("loaded_time") else None,
        last_error=message.last_error,
        last_error_ts=message.last_error_time.ToNanoseconds() / 1e9 if message.HasField("last_error_time") else None,
    )


def rule_to_domain(message: pb.Rule) -> Rule:
    kind = message.WhichOneof("kind")
    if kind == "eligibility":
        e = message.eligibility
        return Eligibility(message.name, _match(e.items), _match(e.context), _match(e.user))
    if kind == "frequency_cap":
        f = message.frequency_cap
        return FrequencyCap(message.name, f.max, f.window_seconds, _match(f.items), f.per)
    if kind == "promotion_share":
        p = message.promotion_share
        return PromotionShare(message.name, _match(p.items), p.share, p.slot, _match(p.context), _match(p.user))
    if kind == "pin":
        n = message.pin
        return Pin(message.name, n.item_id, n.slot, _match(n.context), _match(n.user))
    raise ValueError(f"rule {message.name!r} has no kind")


def _match(conditions: Iterable[pb.FeatureCondition]) -> Match:
    return tuple(Condition(c.feature, tuple(getattr(v, v.WhichOneof("kind") or "string_value") for v in c.values))
                 for c in conditions)
