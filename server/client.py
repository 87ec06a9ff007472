"""A typed Python client for storefronts: Recommend, Feedback, Activate, the catalog, and the
diagnostics an operator asks for (the learning report, why an item).

>>> from server.client import RecbanditClient
>>> with RecbanditClient("localhost:50051", token="…") as recbandit:
...     page = recbandit.recommend("u-123", context={"channel": "app"}, num_results=3)
...     recbandit.feedback(page.event_id, 1.0, item_id=page.items[0].item_id, label="click")

Features are plain dicts (``str``, ``float``/``int``, ``bool`` or a list of ``str``); results are
frozen dataclasses; every failure is one exception type, :class:`RecbanditCallError`.

Deadlines and retries
---------------------
``deadline`` is the budget of a whole call, retries included (as gRPC's own retry design treats a
deadline): 2 s by default, set per client and per call. Within it, a call that fails with
``UNAVAILABLE`` (no server listening, a restart, a dropped connection, the server's model not
loaded yet or its event log not writable) is tried again after an exponential pause with jitter,
at most ``retries`` times. Every RPC here may be repeated safely:

- Recommend carries an ``event_id``: the caller's, or 128 random bits made before the first
  attempt. The server answers a repeated ``event_id`` with the decision it logged, so a retry
  whose first attempt was decided but whose reply was lost gets that same decision.
- Feedback and Activate are recorded once; a retry answers ``DUPLICATE`` when the lost attempt had
  recorded it. UpsertItems replaces whole items, DeleteItems ignores unknown ids (its count then
  excludes items an earlier attempt deleted), ListItems only reads.

``DEADLINE_EXCEEDED`` is never retried: it means the budget is spent, and the server may still be
working on the attempt. The error of a Recommend carries its ``event_id``: calling Recommend
again later with it returns the decision if the server made one. Nor is any other code retried
(``INVALID_ARGUMENT``, ``UNAUTHENTICATED``, ``RESOURCE_EXHAUSTED`` from a server shedding load, …):
the same request would fail the same way, or add to the load.
"""

from __future__ import annotations

import importlib
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from engine.types import Candidate, Item, Status
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.auth import auth_metadata
from server.wire import MAX_RESPONSE_BYTES, features_to_proto, item_to_domain, item_to_proto, record_status_to_domain

if TYPE_CHECKING:
    from engine.explain import Explanation, FeatureContribution
    from engine.liverules import RulesInfo
    from engine.report import LearningReport, PolicyValue, Verdict, VersionReport

_DIAGNOSTICS = {"Explanation": "engine.explain", "FeatureContribution": "engine.explain",
                "LearningReport": "engine.report", "PolicyValue": "engine.report", "Verdict": "engine.report",
                "VersionReport": "engine.report", "RulesInfo": "engine.liverules"}
"""The admin calls' result types, imported when first asked for: a storefront that only decides and
reports never loads the engine's report and explanation code (nor numpy or VW)."""


def __getattr__(name: str) -> Any:
    if name in _DIAGNOSTICS:
        return getattr(importlib.import_module(_DIAGNOSTICS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Candidate",
    "Explanation",
    "FeatureContribution",
    "Features",
    "Item",
    "ItemsPage",
    "LearningReport",
    "PolicyValue",
    "RankedItem",
    "RecbanditCallError",
    "RecbanditClient",
    "Recommendation",
    "ReloadedEmbeddings",
    "RulesInfo",
    "Status",
    "Tls",
    "Verdict",
    "VersionReport",
]

log = logging.getLogger(__name__)

DEFAULT_DEADLINE = 2.0
DEFAULT_RETRIES = 4
FIRST_PAUSE = 0.1
"""Seconds before the first retry; each later pause doubles, up to :data:`LONGEST_PAUSE`."""
LONGEST_PAUSE = 1.0
REPORT_DEADLINE = 300.0
"""A learning report scores up to 50,000 decisions with the live model: minutes, not the default."""
EXPLAIN_DEADLINE = 30.0
"""An explanation not asked for before runs VW's audit in a child process."""
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
    # gRPC waits up to 2 minutes between reconnections by default: a restarted server would be
    # found long after it is back. Try again within 2 s instead.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

Reply = TypeVar("Reply")
Features = Mapping[str, str | float | bool | Sequence[str]]
"""A category, a number (its weight), a flag, or a list of categories, by feature name."""


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS towards the server: the CA to trust (None: the system's roots) and, for mTLS, the
    client's certificate chain and private key, all PEM bytes."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("tls: certificate_chain and private_key go together: give both or neither")

    @classmethod
    def from_files(cls, root_certificates: str | Path | None = None, certificate_chain: str | Path | None = None,
                   private_key: str | Path | None = None) -> Tls:
        """Read the PEM files that are named."""
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(root_certificates), read(certificate_chain), read(private_key))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


@dataclass(frozen=True, slots=True)
class RankedItem:
    """One filled slot: the item, the probability it was chosen with, and the slot (0 first)."""

    item_id: str
    probability: float
    slot: int


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A decision: send ``event_id`` back with :meth:`RecbanditClient.feedback` and ``activate``."""

    event_id: str
    items: tuple[RankedItem, ...]
    model_version: str

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The chosen items, slot 0 first."""
        return tuple(item.item_id for item in self.items)


@dataclass(frozen=True, slots=True)
class ItemsPage:
    """One page of the catalog, in item_id order; ``next_page_token`` is empty on the last page."""

    items: tuple[Item, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class ReloadedEmbeddings:
    """Whether the newest embeddings artifact was taken, and the one in use after the call."""

    changed: bool
    artifact: str


class RecbanditCallError(grpc.RpcError):
    """A call that failed, after its last attempt: the status code and the server's message.

    ``code()`` and ``details()`` answer as on gRPC's own errors; ``event_id`` is the Recommend's
    (so that it can be asked again later), empty for other calls; ``field_violations`` holds the
    ``(field, rule)`` pairs of the server's ``google.rpc.BadRequest`` for ``INVALID_ARGUMENT``.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str, attempts: int, event_id: str = "",
                 field_violations: tuple[tuple[str, str], ...] = ()) -> None:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        super().__init__(f"{method} failed with {code.name} after {tries}: {details}")
        self.method = method
        self._code = code
        self._details = details
        self.attempts = attempts
        self.event_id = event_id
        self.field_violations = field_violations  # (field, rule) of an INVALID_ARGUMENT's google.rpc.BadRequest

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def field_violations(error: grpc.RpcError) -> tuple[tuple[str, str], ...]:
    """The ``(field, rule)`` pairs of a refused call's ``google.rpc.BadRequest`` detail, if any."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    violations: list[tuple[str, str]] = []
    for detail in status.details if status is not None else ():
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            violations += [(v.field, v.description) for v in request.field_violations]
    return tuple(violations)


class RecbanditClient:
    """One channel to a recbandit server, shared by every thread of the storefront.

    ``tls``: None for plaintext, True for TLS trusting the system's roots, or a :class:`Tls`.
    ``token`` is sent as ``authorization: Bearer TOKEN``. ``deadline`` (seconds) bounds each call,
    retries included, but for :meth:`learning_report` and :meth:`explain`, which have longer
    deadlines of their own (:data:`REPORT_DEADLINE`, :data:`EXPLAIN_DEADLINE`; pass ``deadline=``
    to change them); ``retries`` bounds how many times an ``UNAVAILABLE`` call is tried again.
    """

    def __init__(self, target: str, token: str | None = None, tls: Tls | bool | None = None,
                 deadline: float = DEFAULT_DEADLINE, retries: int = DEFAULT_RETRIES) -> None:
        if not 0 < deadline < math.inf:
            raise ValueError(f"deadline: must be a finite number of seconds above 0, got {deadline}")
        if retries < 0:
            raise ValueError(f"retries: must be >= 0, got {retries}")
        self.target = target
        self.deadline = deadline
        self.retries = retries
        self._metadata = auth_metadata(token) if token else None
        if tls is None or tls is False:
            self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        else:
            credentials = grpc.ssl_channel_credentials() if tls is True else tls.credentials()
            self._channel = grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)
        self._recommender = pb_grpc.RecommenderStub(self._channel)
        self._catalog = pb_grpc.CatalogStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)
        self._jitter = random.Random()

    def __enter__(self) -> RecbanditClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    # -- Recommender -------------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        *,
        user_features: Features | None = None,
        context: Features | None = None,
        candidates: Sequence[str | Candidate] | None = None,
        num_results: int = 1,
        exclude_item_ids: Iterable[str] = (),
        defer_activation: bool = False,
        event_id: str | None = None,
        deadline: float | None = None,
    ) -> Recommendation:
        """Choose ``num_results`` items for ``user_id``: among ``candidates`` (item ids, or
        :class:`Candidate` with this request's features), or among the catalog's active items."""
        event_id = event_id or secrets.token_hex(16)  # before the first attempt: every retry is this event
        request = pb.RecommendRequest(user_id=user_id, num_results=num_results, exclude_item_ids=list(exclude_item_ids),
                                      defer_activation=defer_activation, event_id=event_id)
        features_to_proto(user_features or {}, request.user_features)
        features_to_proto(context or {}, request.context)
        for candidate in candidates or ():
            if isinstance(candidate, str):
                request.candidates.add(item_id=candidate)
            else:
                features_to_proto(candidate.features, request.candidates.add(item_id=candidate.item_id).features)
        reply = self._call("Recommend", self._recommender.Recommend, request, deadline, event_id)
        return Recommendation(
            event_id=reply.event_id,
            items=tuple(RankedItem(item.item_id, item.probability, item.slot) for item in reply.items),
            model_version=reply.model_version,
        )

    def feedback(self, event_id: str, reward: float, *, item_id: str = "", label: str = "",
                 deadline: float | None = None) -> Status:
        """Report ``reward`` for ``item_id`` of the decision ``event_id`` (empty: the item of slot 0)."""
        request = pb.FeedbackRequest(event_id=event_id, item_id=item_id, reward=reward, label=label)
        return record_status_to_domain(self._call("Feedback", self._recommender.Feedback, request, deadline).status)

    def activate(self, event_id: str, *, deadline: float | None = None) -> Status:
        """Say that the decision ``event_id``, made with ``defer_activation``, was shown."""
        request = pb.ActivateRequest(event_id=event_id)
        return record_status_to_domain(self._call("Activate", self._recommender.Activate, request, deadline).status)

    # -- Catalog -----------------------------------------------------------------------------------

    def upsert_items(self, items: Iterable[Item], *, deadline: float | None = None) -> int:
        """Insert items, or replace them whole; returns how many were written."""
        request = pb.UpsertItemsRequest(items=[item_to_proto(item) for item in items])
        return self._call("UpsertItems", self._catalog.UpsertItems, request, deadline).upserted

    def delete_items(self, item_ids: Iterable[str], *, deadline: float | None = None) -> int:
        """Remove items from the catalog; returns how many of the ids named an item."""
        request = pb.DeleteItemsRequest(item_ids=list(item_ids))
        return self._call("DeleteItems", self._catalog.DeleteItems, request, deadline).deleted

    def list_items(self, *, page_size: int = 0, page_token: str = "", active_only: bool = False,
                   deadline: float | None = None) -> ItemsPage:
        """One page of the catalog (``page_size`` 0 means 100, at most 1000)."""
        request = pb.ListItemsRequest(page_size=page_size, page_token=page_token, active_only=active_only)
        reply = self._call("ListItems", self._catalog.ListItems, request, deadline)
        items = tuple(item_to_domain(f"items[{i}]", item) for i, item in enumerate(reply.items))
        return ItemsPage(items, reply.next_page_token)

    def iter_items(self, *, page_size: int = 0, active_only: bool = False,
                   deadline: float | None = None) -> Iterator[Item]:
        """Every item of the catalog, page by page; ``deadline`` applies to each page."""
        token = ""
        while True:
            page = self.list_items(page_size=page_size, page_token=token, active_only=active_only, deadline=deadline)
            yield from page.items
            token = page.next_page_token
            if not token:
                return

    # -- Admin -------------------------------------------------------------------------------------

    def learning_report(self, *, window_seconds: float = 0.0, max_decisions: int = 0,
                        deadline: float | None = REPORT_DEADLINE) -> LearningReport:
        """Is it learning? The served policy's reward against uniform random, the storefront's own
        order and the model's greedy choice, per model version, with a verdict (needs the admin
        role). ``window_seconds`` 0 means a day, ``max_decisions`` 0 means 10,000; scoring them
        takes seconds, hence the longer default deadline."""
        from server.converters import learning_report_to_domain

        request = pb.GetLearningReportRequest(window_seconds=window_seconds, max_decisions=max_decisions)
        return learning_report_to_domain(self._call("GetLearningReport", self._admin.GetLearningReport, request,
                                                    deadline))

    def explain(self, event_id: str, item_id: str = "", *, max_features: int = 0,
                deadline: float | None = EXPLAIN_DEADLINE) -> Explanation:
        """Why the decision ``event_id`` offered ``item_id`` (empty: its slot-0 item): the pmf it was
        drawn from, the version that decided, the features with the largest contributions to its
        score (needs the admin role)."""
        from server.converters import explanation_to_domain

        request = pb.ExplainRequest(event_id=event_id, item_id=item_id, max_features=max_features)
        return explanation_to_domain(self._call("Explain", self._admin.Explain, request, deadline))

    def rules(self, *, deadline: float | None = None) -> RulesInfo:
        """The business rules in force, their file, when they were loaded and the last failed load
        (needs the admin role)."""
        from server.converters import rules_info_to_domain

        return rules_info_to_domain(self._call("GetRules", self._admin.GetRules, pb.GetRulesRequest(), deadline))

    def reload_embeddings(self, *, deadline: float | None = None) -> ReloadedEmbeddings:
        """Serve the newest trained embeddings artifact now (needs the admin role)."""
        reply = self._call("ReloadEmbeddings", self._admin.ReloadEmbeddings, pb.ReloadEmbeddingsRequest(), deadline)
        return ReloadedEmbeddings(reply.changed, reply.embeddings.artifact)

    # -- One call, its deadline and its retries ----------------------------------------------------

    def _call(self, method: str, rpc: Callable[..., Reply], request: Any, deadline: float | None,
              event_id: str = "") -> Reply:
        """``rpc(request)`` within the call's budget, tried again on ``UNAVAILABLE`` (module docstring)."""
        budget = self.deadline if deadline is None else deadline
        if not 0 < budget < math.inf:
            raise ValueError(f"deadline: must be a finite number of seconds above 0, got {budget}")
        give_up_at = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            try:
                return rpc(request, timeout=give_up_at - time.monotonic(), metadata=self._metadata)
            except grpc.RpcError as error:
                code, details = error.code(), error.details() or ""
                pause = self._pause(attempt)
                if code not in RETRYABLE or attempt > self.retries or time.monotonic() + pause >= give_up_at:
                    raise RecbanditCallError(method, code, details, attempt, event_id,
                                             field_violations(error)) from error
                log.info("%s: %s (%s) on attempt %d of %d; trying again in %.2f s",
                         method, code.name, details, attempt, self.retries + 1, pause)
                time.sleep(pause)

    def _pause(self, attempt: int) -> float:
        """Half of the exponential step plus a random part of the other half: pauses grow, and the
        storefront's threads (or replicas) that failed together do not come back together."""
        step = min(LONGEST_PAUSE, FIRST_PAUSE * 2 ** (attempt - 1))
        return step / 2 + self._jitter.uniform(0, step / 2)
