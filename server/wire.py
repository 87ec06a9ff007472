"""The wire values a storefront and the server both convert: features, items, record statuses.

Light on purpose: the client (:mod:`server.client`) imports this and the generated modules, not
the engine's serving code; :mod:`server.converters` builds on it for the server.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, MutableMapping

from engine.errors import InvalidRequest, shown
from engine.types import Features, FeatureValue, Item, Status
from server._proto.recbandit.v1 import recbandit_pb2 as pb

MAX_RESPONSE_BYTES = 16 << 20
"""The largest reply a server sends and a client accepts (a page of 1,000 items with features)."""


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
    """Plain values into FeatureValues: ``str``, a real number (numpy.s too), ``bool``, or a list
    or tuple of ``str``; anything else is a TypeError naming the feature."""
    for name, value in features.items():
        if isinstance(value, bool):
            target[name].bool_value = value
        elif isinstance(value, numbers.Real):
            target[name].number_value = float(value)
        elif isinstance(value, str):
            target[name].string_value = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            target[name].list_value.values.extend(value)
        else:
            raise TypeError(f"feature {name!r}: {type(value).__name__} is not a str, a number, a bool or "
                            "a list of str")


def record_status_to_proto(status: Status) -> pb.RecordStatus.ValueType:
    return pb.RecordStatus.Value("RECORD_STATUS_" + status.name)


def record_status_to_domain(status: pb.RecordStatus.ValueType) -> Status:
    """The inverse of :func:`record_status_to_proto`, for clients (:mod:`server.client`)."""
    return Status[pb.RecordStatus.Name(status).removeprefix("RECORD_STATUS_")]


def item_to_domain(field: str, item: pb.Item) -> Item:
    return Item(item.item_id, features_to_domain(f"{field}.features", item.features), item.active)


def item_to_proto(item: Item) -> pb.Item:
    message = pb.Item(item_id=item.item_id, active=item.active)
    features_to_proto(item.features, message.features)
    return message
