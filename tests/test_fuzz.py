"""Seeded fuzzing of every RPC through a real server: random bytes, mutated requests, hostile messages.

Every method of the proto (found from its descriptors, so a new RPC is fuzzed without a change
here) gets :data:`REQUESTS_PER_RPC` requests drawn from ``random.Random(SEED)``, sent as raw bytes:

``random bytes``
    0..2 kB of noise.
``mutated``
    a valid request of the method with bits flipped, cut short, or bytes inserted or duplicated.
``hostile``
    a well-formed message whose fields hold NaN, infinities, extreme integers, empty, 10 kB and
    invalid UTF-8 strings, unknown and duplicate ids, 600 candidates, 300 features, a 100 kB
    feature name, garbage page tokens, unknown fields.

Whatever arrives, the answer must be a status that puts the fault with the caller (or OK), with a
short message, no traceback in the log, and a server that still serves.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.bench_edge import resident_mb
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.app import RunningServer
from server.edge import undecodable
from server.errors import MAX_MESSAGE_LENGTH
from tests.test_api import recommend_request

pytestmark = pytest.mark.slow

SEED = 2026
REQUESTS_PER_RPC = 400
CALL_TIMEOUT = 10.0
MAX_RSS_GROWTH_MB = 100
Code = grpc.StatusCode
ALLOWED_CODES = frozenset({Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION,
                           Code.ALREADY_EXISTS, Code.RESOURCE_EXHAUSTED, Code.OUT_OF_RANGE})
UNDECODABLE = "request could not be decoded"

RANDOM_BYTES, MUTATED, HOSTILE = "random bytes", "mutated", "hostile"
CATALOG_IDS = tuple(f"sku-{j}" for j in range(8))
BAD_UTF8 = "~bad-utf8~"
"""A placeholder string that becomes invalid UTF-8 in some serialised hostile requests, plain text in the rest."""
INVALID_UTF8_SHARE = 0.15

NUMBERS = {
    FieldDescriptor.CPPTYPE_DOUBLE: (math.nan, math.inf, -math.inf, 1e308, -1e308, -1.0, 0.0, 5e-324, 1e6 + 1),
    FieldDescriptor.CPPTYPE_FLOAT: (math.nan, math.inf, -math.inf, 3.4e38, -1.0, 0.0),
    FieldDescriptor.CPPTYPE_INT32: (-1, 0, 1, 51, 1001, 2**31 - 1, -(2**31)),
    FieldDescriptor.CPPTYPE_INT64: (-1, 0, 1, 51, 1001, 2**63 - 1, -(2**63)),
    FieldDescriptor.CPPTYPE_UINT32: (0, 1, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 1, 2**64 - 1),
    FieldDescriptor.CPPTYPE_ENUM: (0, 1, 2, 3, 99, -1),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """One fuzzed call: what was sent to which RPC, and the status that came back."""

    rpc: str
    kind: str
    request: bytes
    code: grpc.StatusCode
    details: str

    def __str__(self) -> str:
        return f"{self.rpc} ({self.kind}, {self.request[:64].hex()}…): {self.code.name} {self.details[:200]!r}"


# -- requests --------------------------------------------------------------------------------------


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(0, 2048))


def mutated(rng: random.Random, valid: bytes) -> bytes:
    """``valid`` after one to four bit flips, truncations, insertions or duplications."""
    data = bytearray(valid)
    for _ in range(rng.randint(1, 4)):
        where = rng.randint(0, len(data))
        how = rng.randrange(4)
        if how == 0 and data:
            data[where % len(data)] ^= 1 << rng.randrange(8)
        elif how == 1:
            del data[where:]
        elif how == 2:
            data[where:where] = rng.randbytes(rng.randint(1, 16))
        else:
            data[where:where] = data[rng.randint(0, where):where]
    return bytes(data)


@dataclass(frozen=True, slots=True)
class Storefront:
    """The ids a storefront really holds (its decisions' event ids), for hostile requests to mix with garbage."""

    event_ids: tuple[str, ...]
    deferred_event_id: str

    def valid_requests(self) -> dict[str, Message]:
        """A valid request of each method by name; methods not named here take their empty request."""
        return {
            "Recommend": recommend_request(num_results=2),
            "Feedback": pb.FeedbackRequest(event_id=self.event_ids[0], reward=1.0, label="click"),
            "Activate": pb.ActivateRequest(event_id=self.deferred_event_id),
            "UpsertItems": pb.UpsertItemsRequest(items=catalog()[:2]),
            "DeleteItems": pb.DeleteItemsRequest(item_ids=[CATALOG_IDS[-1]]),
            "ListItems": pb.ListItemsRequest(page_size=3, active_only=True),
            "ForgetUser": pb.ForgetUserRequest(user_id="u1"),
        }

    def hostile_string(self, rng: random.Random, *, large: bool) -> str:
        """Empty, real or unknown ids, random text, the invalid UTF-8 placeholder; 10 kB when ``large``."""
        choices = ["", "u1", "click", BAD_UTF8, rng.choice(CATALOG_IDS), rng.choice(self.event_ids),
                   f"unknown-{rng.getrandbits(64):016x}", "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(24))]
        return rng.choice(choices + ["x" * 10_000] if large else choices)


def hostile_request(rng: random.Random, example: Message, storefront: Storefront) -> bytes:
    """``example`` with one to three fields made hostile, or a message of hostile values alone;
    sometimes with invalid UTF-8 or an unknown field."""
    message = type(example)()
    if rng.random() < 0.75:
        message.CopyFrom(example)
        for _ in range(rng.randint(1, 3)):
            spoil(rng, message, storefront, depth=0)
    else:
        fill(rng, message, storefront, depth=0)
    text = b"\xff\xfe" * (len(BAD_UTF8) // 2) if rng.random() < INVALID_UTF8_SHARE else b"-" * len(BAD_UTF8)
    data = message.SerializeToString().replace(BAD_UTF8.encode(), text)
    if rng.random() < 0.2:
        data += unknown_field(rng)
    return data


def fill(rng: random.Random, message: Message, storefront: Storefront, depth: int) -> None:
    """Give about half of a fresh ``message``'s fields hostile values."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            spoil_field(rng, message, field, storefront, depth)


def spoil(rng: random.Random, message: Message, storefront: Storefront, depth: int) -> None:
    """Make one field of ``message`` hostile."""
    if message.DESCRIPTOR.fields:
        spoil_field(rng, message, rng.choice(message.DESCRIPTOR.fields), storefront, depth)


def spoil_field(rng: random.Random, message: Message, field: FieldDescriptor, storefront: Storefront,
                depth: int) -> None:
    """A hostile value, hostile new entries, or an entry already there spoilt or duplicated.

    Hundreds of entries, 10 kB strings and 100 kB names only at the top, so a request stays small.
    """
    if depth > 3:
        return
    values = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        spoil_map(rng, values, field.message_type, storefront, depth)
    elif field.is_repeated and field.message_type is not None and values and rng.random() < 0.5:
        entry = values[rng.randrange(len(values))]
        if rng.random() < 0.3:
            values.add().CopyFrom(entry)
        else:
            spoil(rng, entry, storefront, depth + 1)
    elif field.is_repeated:
        count = rng.choice((1, 2, 600) if depth == 0 else (1, 3))
        for _ in range(count):
            if field.message_type is not None:
                fill(rng, values.add(), storefront, depth + 1)
            else:
                values.append(hostile_scalar(rng, field, storefront, large=count < 10 and depth == 0))
    elif field.message_type is not None:
        spoil(rng, values, storefront, depth + 1)
    else:
        setattr(message, field.name, hostile_scalar(rng, field, storefront, large=depth == 0))


def spoil_map(rng: random.Random, entries: Any, entry: Descriptor, storefront: Storefront, depth: int) -> None:
    """Spoil the value of an entry already there, or add up to 300 entries (one may have a 100 kB key)."""
    value = entry.fields_by_name["value"]
    if entries and value.message_type is not None and rng.random() < 0.5:
        spoil(rng, entries[rng.choice(list(entries))], storefront, depth + 1)
        return
    count = rng.choice((1, 3, 300) if depth == 0 else (1, 3))
    for j in range(count):
        key = storefront.hostile_string(rng, large=False) if count < 10 else f"feature-{j}"
        if depth == 0 and rng.random() < 0.05:
            key = "n" * 100_000
        if value.message_type is not None:
            fill(rng, entries[key], storefront, depth + 1)
        else:
            entries[key] = hostile_scalar(rng, value, storefront, large=False)


def hostile_scalar(rng: random.Random, field: FieldDescriptor, storefront: Storefront, *, large: bool) -> object:
    if field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        text = storefront.hostile_string(rng, large=large)
        return text.encode("utf-8", "surrogatepass") if field.type == FieldDescriptor.TYPE_BYTES else text
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    return rng.choice(NUMBERS[field.cpp_type])


def unknown_field(rng: random.Random) -> bytes:
    """Field 999 as the largest varint or as 10 kB of bytes: well-formed, but no field of ours."""
    if rng.random() < 0.5:
        return varint(999 << 3) + varint(2**64 - 1)
    return varint(999 << 3 | 2) + varint(10_000) + rng.randbytes(10_000)


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


# -- the fuzz ----------------------------------------------------------------------------------------


def catalog() -> list[pb.Item]:
    items = [pb.Item(item_id=item_id, active=True) for item_id in CATALOG_IDS]
    for j, item in enumerate(items):
        item.features["category"].string_value = f"c{j % 3}"
        item.features["price"].number_value = 5.0 + j
    return items


def open_storefront(client: SimpleNamespace) -> Storefront:
    """Upsert the catalog and make a few decisions, so that fuzzed requests can name real ids."""
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=catalog()))
    event_ids = tuple(client.recommender.Recommend(recommend_request(num_results=2)).event_id for _ in range(4))
    deferred = client.recommender.Recommend(recommend_request(defer_activation=True)).event_id
    return Storefront(event_ids, deferred)


def fuzz(channel: grpc.Channel, rng: random.Random, storefront: Storefront) -> list[Answer]:
    """Send every method :data:`REQUESTS_PER_RPC` requests, half of them hostile, in a seeded order."""
    valid = storefront.valid_requests()
    plan = []
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            example = valid[method.name] if method.name in valid else getattr(pb, method.input_type.name)()
            plan += [(service, method, example)] * REQUESTS_PER_RPC
    rng.shuffle(plan)
    answers = []
    for service, method, example in plan:
        kind = rng.choice((RANDOM_BYTES, MUTATED, HOSTILE, HOSTILE))
        data = fuzzed_request(rng, kind, example, storefront)
        rpc = f"{service.name}/{method.name}"
        answers.append(Answer(rpc, kind, data, *call(channel, f"/{service.full_name}/{method.name}", data)))
    return answers


def fuzzed_request(rng: random.Random, kind: str, example: Message, storefront: Storefront) -> bytes:
    if kind == RANDOM_BYTES:
        return random_bytes(rng)
    if kind == MUTATED:
        return mutated(rng, example.SerializeToString())
    return hostile_request(rng, example, storefront)


def call(channel: grpc.Channel, path: str, data: bytes) -> tuple[grpc.StatusCode, str]:
    try:
        channel.unary_unary(path)(data, timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def counts_by_code(answers: Sequence[Answer]) -> str:
    """One line per RPC and one for all of them: how many calls got each status."""
    def line(name: str, subset: Sequence[Answer]) -> str:
        counts = Counter(a.code.name for a in subset)
        return f"  {name:<26} " + ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))

    rpcs = sorted({a.rpc for a in answers})
    return "\n".join([line(rpc, [a for a in answers if a.rpc == rpc]) for rpc in rpcs] + [line("all", answers)])


# -- the test ----------------------------------------------------------------------------------------


def test_fuzzed_requests_get_a_caller_error_and_leave_the_server_serving(
    start_server: Callable[..., tuple[RunningServer, SimpleNamespace]], caplog: pytest.LogCaptureFixture
) -> None:
    _, client = start_server()
    storefront = open_storefront(client)
    caplog.set_level(logging.WARNING)
    undecodable_before, rss_before, began = undecodable.total, resident_mb(), time.perf_counter()

    answers = fuzz(client.channel, random.Random(SEED), storefront)

    elapsed, rss_after = time.perf_counter() - began, resident_mb()
    print(f"\nfuzz seed {SEED}: {len(answers):,} calls in {elapsed:.1f} s, "
          f"RSS {rss_before:.0f} → {rss_after:.0f} MB\n{counts_by_code(answers)}")
    assert len(answers) >= 2000
    assert [str(a) for a in answers if a.code not in ALLOWED_CODES][:5] == []
    assert [str(a) for a in answers if len(a.details) > MAX_MESSAGE_LENGTH][:5] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info][:5] == []
    noise_undecoded = sum(a.kind == RANDOM_BYTES and a.code == Code.INVALID_ARGUMENT
                          and a.details.startswith(UNDECODABLE) for a in answers)
    assert undecodable.total - undecodable_before >= noise_undecoded > 0
    assert rss_after - rss_before < MAX_RSS_GROWTH_MB

    health = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    decision = client.recommender.Recommend(recommend_request(num_results=2), timeout=CALL_TIMEOUT)
    feedback = pb.FeedbackRequest(event_id=decision.event_id, item_id=decision.items[0].item_id, reward=1.0)
    assert client.recommender.Feedback(feedback, timeout=CALL_TIMEOUT).status == pb.RECORD_STATUS_NEW
