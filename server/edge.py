"""The edge of the server: how recbandit's services are registered, and what happens to bytes
that are not the message they claim to be.

The generated ``add_*Servicer_to_server`` functions hand undecodable bytes to protobuf's parser
inside grpc, which answers ``UNKNOWN`` and logs a traceback per request. Here every method is
registered from the proto's descriptors with a decoder that never raises: bytes that do not parse
become an :class:`Undecodable`, which :func:`server.errors.rpc` answers with ``INVALID_ARGUMENT``
at no further cost. They are counted, and the count is logged at most once every
:data:`UNDECODABLE_LOG_INTERVAL` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import grpc
from google.protobuf.message import Message

from server._proto.recbandit.v1 import recbandit_pb2 as pb

log = logging.getLogger(__name__)

UNDECODABLE_LOG_INTERVAL = 10.0


class Undecodable:
    """What a request's bytes become when they do not parse as the method's request message."""

    __slots__ = ("message_name",)

    def __init__(self, message_name: str) -> None:
        self.message_name = message_name

    def __repr__(self) -> str:
        return f"Undecodable({self.message_name})"


class UndecodableCounter:
    """Counts undecodable requests and logs the count now and then, never once per request."""

    def __init__(self, interval: float = UNDECODABLE_LOG_INTERVAL) -> None:
        self.total = 0
        self._interval = interval
        self._since_logged = 0
        self._next_log = 0.0
        self._lock = threading.Lock()

    def count(self, message_name: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.total += 1
            self._since_logged += 1
            if now < self._next_log:
                return
            since, self._since_logged, self._next_log = self._since_logged, 0, now + self._interval
        log.warning("%d request(s) could not be decoded (the latest as %s); answered INVALID_ARGUMENT",
                    since, message_name)


undecodable = UndecodableCounter()


def decoder(message_class: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """``message_class.FromString`` that returns an :class:`Undecodable` instead of raising."""
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.name

    def decode(data: bytes) -> Message | Undecodable:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - DecodeError from upb; whatever the parser raises, the bytes are bad
            undecodable.count(name)
            return Undecodable(name)

    return decode


def add_services(server: grpc.aio.Server, servicers: Mapping[str, object]) -> None:
    """Register every service of the proto, by name (``"Recommender"`` → its servicer)."""
    for service in pb.DESCRIPTOR.services_by_name.values():
        servicer = servicers[service.name]
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                getattr(servicer, method.name),
                request_deserializer=decoder(getattr(pb, method.input_type.name)),
                response_serializer=getattr(pb, method.output_type.name).SerializeToString,
            )
            for method in service.methods
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
        server.add_registered_method_handlers(service.full_name, handlers)
