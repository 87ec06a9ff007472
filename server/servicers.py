"""Thin servicers: convert the request, call the engine, convert the answer."""

from __future__ import annotations

import grpc

from engine.core import Engine
from server import converters
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.errors import rpc


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @rpc
    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.RecommendResponse:
        decision = self._engine.decide(converters.recommend_request_to_domain(request))
        return converters.decision_to_proto(decision)

    @rpc
    def Feedback(self, request: pb.FeedbackRequest, context: grpc.ServicerContext) -> pb.FeedbackResponse:
        status = self._engine.record_reward(converters.feedback_request_to_domain(request))
        return converters.feedback_status_to_proto(status)

    @rpc
    def Activate(self, request: pb.ActivateRequest, context: grpc.ServicerContext) -> pb.ActivateResponse:
        return converters.activate_status_to_proto(self._engine.activate(request.event_id))


class CatalogServicer(pb_grpc.CatalogServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @rpc
    def UpsertItems(self, request: pb.UpsertItemsRequest, context: grpc.ServicerContext) -> pb.UpsertItemsResponse:
        items = [converters.item_to_domain(f"items[{i}]", item) for i, item in enumerate(request.items)]
        return pb.UpsertItemsResponse(upserted=self._engine.upsert_items(items))

    @rpc
    def DeleteItems(self, request: pb.DeleteItemsRequest, context: grpc.ServicerContext) -> pb.DeleteItemsResponse:
        return pb.DeleteItemsResponse(deleted=self._engine.delete_items(list(request.item_ids)))

    @rpc
    def ListItems(self, request: pb.ListItemsRequest, context: grpc.ServicerContext) -> pb.ListItemsResponse:
        items, token = self._engine.list_items(request.page_size, request.page_token, request.active_only)
        return pb.ListItemsResponse(items=[converters.item_to_proto(i) for i in items], next_page_token=token)


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @rpc
    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> pb.GetModelInfoResponse:
        return converters.model_info_to_proto(self._engine.model_info())

    @rpc
    def Checkpoint(self, request: pb.CheckpointRequest, context: grpc.ServicerContext) -> pb.CheckpointResponse:
        checkpoint = self._engine.checkpoint()
        return pb.CheckpointResponse(
            checkpoint_time=converters.timestamp(checkpoint.ts), examples_learned=checkpoint.examples_learned
        )
