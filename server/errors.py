"""The one map from domain errors to gRPC status codes, applied to every RPC by :func:`rpc`."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from engine.errors import (
    EventConflict,
    InvalidRequest,
    ModelNotReady,
    PreconditionFailed,
    RecbanditError,
    UnknownEvent,
)

log = logging.getLogger(__name__)

STATUS_CODES: dict[type[RecbanditError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownEvent: grpc.StatusCode.NOT_FOUND,
    PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    EventConflict: grpc.StatusCode.ALREADY_EXISTS,
    ModelNotReady: grpc.StatusCode.UNAVAILABLE,
}
INTERNAL_MESSAGE = "internal error; the server log has the details"

F = TypeVar("F", bound=Callable[..., Any])


def rpc(method: F) -> F:
    """Run a servicer coroutine; turn domain errors into their status, anything else into INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except RecbanditError as error:
            await context.abort(STATUS_CODES.get(type(error), grpc.StatusCode.INVALID_ARGUMENT), str(error))
        except Exception:
            log.exception("%s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

    return wrapper  # type: ignore[return-value]
