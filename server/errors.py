"""The one map from domain errors to gRPC status codes, applied to every RPC by :func:`rpc`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from engine.errors import (
    Busy,
    EventConflict,
    InvalidRequest,
    ModelNotReady,
    PreconditionFailed,
    RecbanditError,
    StorageUnavailable,
    UnknownCandidate,
    UnknownEvent,
)
from server.edge import Undecodable
from server.logs import access

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[RecbanditError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownEvent: grpc.StatusCode.NOT_FOUND,
    UnknownCandidate: grpc.StatusCode.NOT_FOUND,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    EventConflict: grpc.StatusCode.ALREADY_EXISTS,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    Busy: grpc.StatusCode.RESOURCE_EXHAUSTED,
    StorageUnavailable: grpc.StatusCode.UNAVAILABLE,
}
INTERNAL_MESSAGE = "internal error; the server log has the details"
MAX_MESSAGE_LENGTH = 512
"""Error messages are cut to this many characters: they travel in metadata, which is bounded."""

F = TypeVar("F", bound=Callable[..., Any])


class InFlight:
    """How many calls the servicers are serving now, and how many they may (``--max-in-flight``).

    Counted here, on the event loop, rather than by grpc's ``maximum_concurrent_rpcs``, whose
    asyncio form lets calls past the limit through or cancels them. Health is not counted, so
    probes still answer when the server sheds load.
    """

    __slots__ = ("limit", "count")

    def __init__(self, limit: int = 1 << 62) -> None:
        self.limit = limit
        self.count = 0


RETRY_DELAY_SECONDS = 1
"""The RetryInfo delay of RESOURCE_EXHAUSTED and UNAVAILABLE: a client's first backoff, at least."""


def rich_status(code: grpc.StatusCode, message: str, error: Exception | None = None) -> grpc.Status:
    """The refusal as a ``google.rpc.Status`` (grpcio-status) with the detail clients of any language read:

    - ``INVALID_ARGUMENT``: ``BadRequest`` with the field violation (the field path and the rule);
    - ``NOT_FOUND``: ``ResourceInfo`` naming the decision (or the item of a decision) not found;
    - ``FAILED_PRECONDITION``: ``PreconditionFailure`` (``STATE`` of the field: a closed window, …);
    - ``RESOURCE_EXHAUSTED`` and ``UNAVAILABLE``: ``RetryInfo``, how long to wait at least.

    It travels in the ``grpc-status-details-bin`` trailer, beside the status code and message.
    """
    from google.protobuf import duration_pb2
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    detail: Any = None
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        field, rule = (error.field, error.reason) if isinstance(error, InvalidRequest) else ("", message)
        detail = error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field[:MAX_MESSAGE_LENGTH],
                                                        description=rule[:MAX_MESSAGE_LENGTH])])
    elif code is grpc.StatusCode.NOT_FOUND:
        kind, name = ("candidate", error.item_id) if isinstance(error, UnknownCandidate) else (
            "decision", getattr(error, "event_id", ""))
        detail = error_details_pb2.ResourceInfo(resource_type=kind, resource_name=name[:MAX_MESSAGE_LENGTH],
                                                description=message)
    elif code is grpc.StatusCode.FAILED_PRECONDITION and isinstance(error, PreconditionFailed):
        detail = error_details_pb2.PreconditionFailure(violations=[error_details_pb2.PreconditionFailure.Violation(
            type="STATE", subject=error.field[:MAX_MESSAGE_LENGTH], description=error.reason[:MAX_MESSAGE_LENGTH])])
    elif code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        detail = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=RETRY_DELAY_SECONDS))
    status = status_pb2.Status(code=code.value[0], message=message)
    if detail is not None:
        status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def status_code(error: RecbanditError) -> grpc.StatusCode | None:
    """The status of ``error``'s nearest class in :data:`STATUS_CODES`; None if it has none."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)  # type: ignore[call-overload]
        if code is not None:
            return code
    return None


def rpc(method: F) -> F:
    """Run a servicer coroutine at the edge's rules, and write its access line (:mod:`server.logs`).

    - Bytes that did not decode (:class:`~server.edge.Undecodable`): ``INVALID_ARGUMENT``.
    - Past the servicer's :class:`InFlight` limit (``self.in_flight``): ``RESOURCE_EXHAUSTED`` at once.
    - A call whose deadline passed before it started: ``DEADLINE_EXCEEDED``, and no work.
    - Domain errors: their status, with a message cut to :data:`MAX_MESSAGE_LENGTH`.
    - Anything else, a domain error without a status included: logged with its traceback,
      ``INTERNAL`` with a generic message.
    """
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        began = time.perf_counter()

        def finished() -> None:  # once: before an error status leaves (abort sends it), or when the call returns
            seconds = time.perf_counter() - began
            access(name, outcome.code.name, seconds,
                   getattr(outcome.response, "event_id", "") or getattr(request, "event_id", ""))
            if (metrics := getattr(self, "metrics", None)) is not None:
                metrics.record_rpc(name, outcome.code.name, seconds)

        outcome = _Outcome(finished)
        try:
            return await _serve(method, self, request, context, outcome)
        finally:
            outcome.finish()

    return wrapper  # type: ignore[return-value]


class _Outcome:
    """What the access line says of a call: its status and its response."""

    __slots__ = ("code", "response", "_finished")

    def __init__(self, finished: Callable[[], None]) -> None:
        self.code = grpc.StatusCode.OK
        self.response: Any = None
        self._finished: Callable[[], None] | None = finished

    def finish(self) -> None:
        """Write the call's access line and metrics, the first time only: a client that got its
        status finds the call counted."""
        if self._finished is not None:
            finished, self._finished = self._finished, None
            finished()


async def _serve(method: Callable[..., Any], servicer: Any, request: Any, context: grpc.aio.ServicerContext,
                 outcome: _Outcome) -> Any:
    async def refuse(code: grpc.StatusCode, message: str, error: Exception | None = None) -> None:
        outcome.code = code
        status = rich_status(code, message, error)
        outcome.finish()
        await context.abort(status.code, status.details, status.trailing_metadata)

    if type(request) is Undecodable:
        await refuse(grpc.StatusCode.INVALID_ARGUMENT, f"request could not be decoded as {request.message_name}")
    in_flight: InFlight = servicer.in_flight
    if in_flight.count >= in_flight.limit:
        await refuse(grpc.StatusCode.RESOURCE_EXHAUSTED,
                     f"the server is serving its limit of {in_flight.limit} calls; retry with backoff")
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        await refuse(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call started")
    in_flight.count += 1
    try:
        outcome.response = await method(servicer, request, context)
        return outcome.response
    except asyncio.CancelledError:  # the caller cancelled, or its deadline passed, while it ran
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        outcome.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        raise
    except Exception as error:
        code = status_code(error) if isinstance(error, RecbanditError) else None
        if code is None:
            log.exception("%s failed", method.__name__)
            await refuse(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
        else:
            await refuse(code, str(error)[:MAX_MESSAGE_LENGTH], error)
    finally:
        in_flight.count -= 1
