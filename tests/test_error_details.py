"""Refusals carry a google.rpc.Status with the detail a client in any language reads, beside the
code and the message: BadRequest, ResourceInfo, RetryInfo (grpcio-status)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.client import RecbanditCallError, RecbanditClient
from tests.test_api import recommend_request


def refusal(call, request):  # type: ignore[no-untyped-def]
    """The refused call's code, message and its one detail, unpacked."""
    with pytest.raises(grpc.RpcError) as refused:
        call(request)
    status = rpc_status.from_call(refused.value)
    assert status is not None and status.code == refused.value.code().value[0]
    assert status.message == refused.value.details() and len(status.details) == 1
    for kind in (error_details_pb2.BadRequest, error_details_pb2.ResourceInfo, error_details_pb2.RetryInfo,
                 error_details_pb2.PreconditionFailure):
        detail = kind()
        if status.details[0].Unpack(detail):
            return refused.value.code(), detail
    raise AssertionError(f"an unexpected detail: {status.details[0].type_url}")


def test_invalid_argument_carries_a_field_violation(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    code, detail = refusal(client.recommender.Recommend, recommend_request(num_results=9))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in detail.field_violations] == [
        ("num_results", "must be at most the 5 candidates left, got 9")]
    code, detail = refusal(client.recommender.Recommend, pb.RecommendRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in detail.field_violations] == [("user_id", "must not be empty")]
    code, detail = refusal(client.recommender.Recommend, pb.RecommendRequest(user_id="u1"))  # no catalog either
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert [(v.type, v.subject) for v in detail.violations] == [("STATE", "candidates")]


def test_not_found_names_the_resource(server) -> None:  # type: ignore[no-untyped-def]
    _, client = server
    code, detail = refusal(client.recommender.Feedback, pb.FeedbackRequest(event_id="nope", reward=1.0))
    assert code == grpc.StatusCode.NOT_FOUND
    assert (detail.resource_type, detail.resource_name) == ("decision", "nope")
    event_id = client.recommender.Recommend(recommend_request()).event_id
    code, detail = refusal(client.admin.Explain, pb.ExplainRequest(event_id=event_id, item_id="sku-x"))
    assert (code, detail.resource_type, detail.resource_name) == (grpc.StatusCode.NOT_FOUND, "candidate", "sku-x")


def test_resource_exhausted_says_when_to_retry(server) -> None:  # type: ignore[no-untyped-def]
    running, client = server
    with running.engine._reporting:  # as a report running holds it
        code, detail = refusal(client.admin.GetLearningReport, pb.GetLearningReportRequest())
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and detail.retry_delay.seconds == 1


def test_the_client_hands_the_violations_over(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    with RecbanditClient(f"127.0.0.1:{running.port}") as client:
        with pytest.raises(RecbanditCallError) as refused:
            client.recommend("u1", candidates=["a", "b"], num_results=3)
    assert refused.value.field_violations == (("num_results", "must be at most the 2 candidates left, got 3"),)
