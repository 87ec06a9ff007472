"""Thin servicers: convert the request, call the engine, convert the answer.

They are coroutines on the server's event loop. Recommend and Feedback await the engine's
``*_async`` calls, so the loop serves other calls while a decision or reward commits; the rarer
calls that block (catalog writes, Activate, checkpoints, ForgetUser) run in a worker thread, and
so does every step of a Recommend larger than :data:`LARGE_REQUEST_WORK`.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

import grpc

from engine.core import Engine
from engine.errors import PreconditionFailed
from engine.types import Status
from engine.validation import check_decision_sizes
from server import converters
from server.champion import ChampionFollower
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.errors import InFlight, rpc
from server.wire import item_to_proto

if TYPE_CHECKING:
    from server.metrics import Metrics

Context = grpc.aio.ServicerContext

LARGE_REQUEST_WORK = 2_000
"""A Recommend whose work (:func:`server.converters.decision_work`) passes this is converted and
decided in a worker thread, off the event loop."""


def caller_gone(context: Context) -> bool:
    """Whether the caller cancelled or its deadline passed: a reply would reach nobody."""
    remaining = context.time_remaining()
    return context.cancelled() or (remaining is not None and remaining <= 0)


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, engine: Engine, in_flight: InFlight | None = None, metrics: Metrics | None = None) -> None:
        self._engine = engine
        self.in_flight = in_flight or InFlight()
        self.metrics = metrics

    @rpc
    async def Recommend(self, request: pb.RecommendRequest, context: Context) -> pb.RecommendResponse:
        limits = self._engine.config.limits
        check_decision_sizes(request, limits)  # a few len() calls, before any work that scales with size
        gone = functools.partial(caller_gone, context)
        if converters.decision_work(request) > LARGE_REQUEST_WORK:
            asked = await asyncio.to_thread(converters.recommend_request_to_domain, request, limits)
            decision = await self._engine.decide_async(asked, prepare_in_thread=True, caller_gone=gone)
        else:
            asked = converters.recommend_request_to_domain(request, limits)
            decision = await self._engine.decide_async(asked, caller_gone=gone)
        return converters.decision_to_proto(decision)

    @rpc
    async def Feedback(self, request: pb.FeedbackRequest, context: Context) -> pb.FeedbackResponse:
        status = await self._engine.record_reward_async(converters.feedback_request_to_domain(request))
        if self.metrics is not None and status is Status.NEW:
            self.metrics.rewarded(request.label)
        return converters.feedback_status_to_proto(status)

    @rpc
    async def Activate(self, request: pb.ActivateRequest, context: Context) -> pb.ActivateResponse:
        status = await asyncio.to_thread(self._engine.activate, request.event_id)
        return converters.activate_status_to_proto(status)


class CatalogServicer(pb_grpc.CatalogServicer):
    def __init__(self, engine: Engine, in_flight: InFlight | None = None, metrics: Metrics | None = None) -> None:
        self._engine = engine
        self.in_flight = in_flight or InFlight()
        self.metrics = metrics

    @rpc
    async def UpsertItems(self, request: pb.UpsertItemsRequest, context: Context) -> pb.UpsertItemsResponse:
        def upsert() -> int:  # converting up to max_items_per_call items is work for a thread too
            return self._engine.upsert_items(converters.items_to_domain(request.items, self._engine.config.limits))

        return pb.UpsertItemsResponse(upserted=await asyncio.to_thread(upsert))

    @rpc
    async def DeleteItems(self, request: pb.DeleteItemsRequest, context: Context) -> pb.DeleteItemsResponse:
        deleted = await asyncio.to_thread(self._engine.delete_items, list(request.item_ids))
        return pb.DeleteItemsResponse(deleted=deleted)

    @rpc
    async def ListItems(self, request: pb.ListItemsRequest, context: Context) -> pb.ListItemsResponse:
        items, token = self._engine.list_items(request.page_size, request.page_token, request.active_only)
        return pb.ListItemsResponse(items=[item_to_proto(i) for i in items], next_page_token=token)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, engine: Engine, champion: ChampionFollower | None = None, in_flight: InFlight | None = None,
                 metrics: Metrics | None = None) -> None:
        self._engine = engine
        self._champion = champion
        self.in_flight = in_flight or InFlight()
        self.metrics = metrics

    @rpc
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: Context) -> pb.GetModelInfoResponse:
        return converters.model_info_to_proto(self._engine.model_info(), self._engine.config.apprentice)

    @rpc
    async def SetServingMode(self, request: pb.SetServingModeRequest, context: Context) -> pb.SetServingModeResponse:
        changed, mode = await asyncio.to_thread(self._engine.set_serving_mode, request.mode)
        return pb.SetServingModeResponse(changed=changed, serving_mode=converters.serving_mode_to_proto(
            mode, config=self._engine.config.apprentice))

    @rpc
    async def Checkpoint(self, request: pb.CheckpointRequest, context: Context) -> pb.CheckpointResponse:
        checkpoint = await asyncio.to_thread(self._engine.checkpoint)
        return pb.CheckpointResponse(
            checkpoint_time=converters.timestamp(checkpoint.ts), examples_learned=checkpoint.examples_learned
        )

    @rpc
    async def ReloadEmbeddings(self, request: pb.ReloadEmbeddingsRequest, context: Context) -> pb.ReloadEmbeddingsResponse:
        changed = await asyncio.to_thread(self._engine.reload_embeddings)
        info = self._engine.model_info().embeddings
        return pb.ReloadEmbeddingsResponse(changed=changed, embeddings=converters.embeddings_info_to_proto(info))

    @rpc
    async def ReloadPolicy(self, request: pb.ReloadPolicyRequest, context: Context) -> pb.ReloadPolicyResponse:
        if self._champion is None:
            raise PreconditionFailed("policy_registry", "not set: start the server with --policy-registry URI")
        changed, policy = await asyncio.to_thread(self._champion.reload)
        return pb.ReloadPolicyResponse(changed=changed, registered_policy=converters.registered_policy_to_proto(policy))

    @rpc
    async def ForgetUser(self, request: pb.ForgetUserRequest, context: Context) -> pb.ForgetUserResponse:
        return converters.forgotten_user_to_proto(await asyncio.to_thread(self._engine.forget_user, request.user_id))

    @rpc
    async def Explain(self, request: pb.ExplainRequest, context: Context) -> pb.ExplainResponse:
        explanation = await asyncio.to_thread(self._engine.explain, request.event_id, request.item_id,
                                              request.max_features)
        return converters.explanation_to_proto(explanation)

    @rpc
    async def GetRules(self, request: pb.GetRulesRequest, context: Context) -> pb.GetRulesResponse:
        return converters.rules_info_to_proto(self._engine.rules_info())

    @rpc
    async def GetLearningReport(
        self, request: pb.GetLearningReportRequest, context: Context
    ) -> pb.GetLearningReportResponse:
        asked = converters.report_request_to_domain(request).resolved()  # out-of-range values: refused on the loop
        report = await asyncio.to_thread(self._engine.learning_report, asked)
        return converters.learning_report_to_proto(report)
