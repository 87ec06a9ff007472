"""Build, start and stop a recbandit server.

The server is ``grpc.aio``: servicers are coroutines on one event loop thread, and a Recommend or
Feedback waiting for its durable commit leaves the loop free for other calls. One thread doing
the Python work avoids the lock hand-offs between many RPC threads (Python runs one thread at a
time), which cost more than the work itself on a small machine.

``build_server`` binds the address and returns the port (so tests can bind port 0). Health says
SERVING only once the engine has loaded its model; on SIGTERM/SIGINT :func:`serve` sets
NOT_SERVING, lets in-flight RPCs finish within the grace period, checkpoints and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Coroutine
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from engine.core import Engine
from engine.errors import ConfigurationError
from engine.policy_source import PolicySource
from engine.retraining import EmbeddingsTrainer
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.auth import AuthInterceptor, Tokens
from server.champion import ChampionFollower
from server.edge import add_services
from server.errors import InFlight
from server.metrics import Metrics, reward_label_set
from server.servicers import AdminServicer, CatalogServicer, RecommenderServicer
from server.settings import Settings
from server.transport import refuse_address_in_use, server_credentials, server_options

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


@dataclass(frozen=True)
class Edge:
    """What the edge needs before a server is built: gRPC's options, TLS credentials (None: plaintext)
    and the tokens (None: no authentication). Read first, so that a bad setting is refused before
    the engine starts."""

    options: tuple[tuple[str, Any], ...]
    credentials: grpc.ServerCredentials | None
    tokens: Tokens | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Edge:
        return cls(tuple(server_options(settings)), server_credentials(settings),
                   Tokens(settings.auth_tokens) if settings.auth_tokens else None)


async def build_server(
    settings: Settings, engine: Engine, edge: Edge, champion: ChampionFollower | None = None
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer, Metrics | None]:
    """The ``grpc.aio`` server with every service, bound but not started (call on its event loop), and
    its metrics when ``--metrics-port`` asks for them.

    The edge's rules (:mod:`server.transport`, :mod:`server.auth`, :mod:`server.edge`) apply
    before any servicer runs: TLS, tokens and roles, the size of a message, calls in flight.
    """
    credentials = edge.credentials
    server = grpc.aio.server(
        interceptors=[AuthInterceptor(edge.tokens)] if edge.tokens is not None else None,
        options=edge.options,
    )
    in_flight = InFlight(settings.max_in_flight)  # one bound for every service
    metrics = Metrics(engine, in_flight, reward_label_set(settings.reward_labels)) if settings.metrics_port else None
    if metrics is not None:
        engine.observe(metrics)
    add_services(server, {
        "Recommender": RecommenderServicer(engine, in_flight, metrics),
        "Catalog": CatalogServicer(engine, in_flight, metrics),
        "Admin": AdminServicer(engine, champion, in_flight, metrics),
    })
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        names = (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    address = f"{settings.host}:{settings.port}"
    if not settings.reuse_port:
        refuse_address_in_use(settings.host, settings.port)
    try:
        port = server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc raises this, rather than return 0, when it cannot bind
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}: the address is in use or not this machine's")
    return server, port, health_servicer, metrics


class EventLoopThread:
    """An asyncio event loop running in its own thread: the server's one thread of Python work.

    Servicers run on it as coroutines; blocking calls they make go to its default executor,
    a pool of ``workers`` threads.
    """

    def __init__(self, workers: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_default_executor(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"))
        self._thread = threading.Thread(target=self.loop.run_forever, name="rpc-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def close(self) -> None:
        self.run(self.loop.shutdown_default_executor())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@dataclass
class RunningServer:
    """A started server, its event loop and its engine, stopped together."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    engine: Engine
    loop: EventLoopThread
    champion: ChampionFollower | None = None
    edge: Edge | None = None
    metrics_endpoint: Any = None  # the HTTP server of /metrics, when on

    def stop(self, grace: float) -> None:
        """NOT_SERVING, let in-flight RPCs finish within ``grace`` seconds, then close the engine."""

        async def stop_serving() -> None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(grace)

        self.loop.run(stop_serving())
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.shutdown()
            self.metrics_endpoint.server_close()
        if self.champion is not None:
            self.champion.close()
        self.engine.close()
        self.loop.close()


def start(settings: Settings, policy_source: PolicySource | None = None,
          embeddings_trainer: EmbeddingsTrainer | None = None) -> RunningServer:
    """Start serving; with ``policy_source`` (what ``--policy-registry`` names, built by the CLI),
    follow its champion; with ``embeddings_trainer`` (built by the CLI for
    ``--embeddings-retrain-interval``), re-train the embeddings on that schedule."""
    if settings.policy_registry and policy_source is None:
        raise ConfigurationError("policy_registry", "is set, but no policy source was handed to the server")
    edge = Edge.from_settings(settings)
    engine = Engine(settings.engine_config(), embeddings_trainer=embeddings_trainer)
    champion = None
    if policy_source is not None:
        download_dir = Path(settings.data_dir) / "policies"
        champion = ChampionFollower(engine, policy_source, settings.policy_poll_interval, download_dir)
    loop = EventLoopThread(settings.workers)

    async def start_serving() -> tuple[grpc.aio.Server, int, health_aio.HealthServicer, Any]:
        server, port, health_servicer, metrics = await build_server(settings, engine, edge, champion)
        endpoint = _serve_metrics(metrics, settings) if metrics is not None else None
        await server.start()
        await _set_health(health_servicer, serving=True)
        return server, port, health_servicer, endpoint

    try:
        server, port, health_servicer, endpoint = loop.run(start_serving())
    except BaseException:
        loop.close()
        engine.close()
        raise
    if champion is not None:
        champion.start()

    def on_storage(healthy: bool) -> None:  # from the log's writer thread
        asyncio.run_coroutine_threadsafe(_set_health(health_servicer, serving=healthy), loop.loop)

    engine.watch_storage(on_storage)
    return RunningServer(server, port, health_servicer, engine, loop, champion, edge, endpoint)


def _serve_metrics(metrics: Metrics, settings: Settings) -> Any:
    try:
        return metrics.serve(settings.metrics_host, settings.metrics_port)
    except OSError as error:
        raise OSError(f"cannot bind the metrics endpoint {settings.metrics_host}:{settings.metrics_port}: "
                      f"{error.strerror}") from None


def _reload(tokens: Tokens | None) -> None:
    """SIGHUP: re-read the tokens file (nothing else is reloaded)."""
    if tokens is None:
        log.info("SIGHUP: no tokens file to reload (--auth-tokens is not set)")
    else:
        tokens.reload()


async def _set_health(health: health_aio.HealthServicer, *, serving: bool) -> None:
    """Every service SERVING, or NOT_SERVING (while the event log cannot be written)."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health.set(name, status)


def serve(settings: Settings, policy_source: PolicySource | None = None,
          embeddings_trainer: EmbeddingsTrainer | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then drain, checkpoint and return."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running = start(settings, policy_source, embeddings_trainer)
    tokens = running.edge.tokens if running.edge else None
    reloads = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sighup")  # one reload at a time, in order
    signal.signal(signal.SIGHUP, lambda *_: reloads.submit(_reload, tokens))
    info = running.engine.model_info()
    transport = "mTLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext"
    log.info(
        "listening on %s:%d (%s, %s; data %s%s, model %s, exploration %s%s)",
        settings.host, running.port, transport, "tokens" if tokens else "no tokens", settings.data_dir,
        f", event log {running.engine.log.path}" if settings.store else "",
        info.model_version, info.bandit.exploration,
        f"; metrics on http://{settings.metrics_host}:{settings.metrics_port}/metrics" if settings.metrics_port else "",
        extra={"port": running.port},
    )
    # A signal may be delivered to any thread; Python runs its handler only when the main thread
    # runs, so the main thread wakes up often rather than sleeping in one long wait.
    while not stop.wait(0.2):
        pass
    log.info("stopping: draining RPCs for up to %.1fs, then checkpointing", settings.grace)
    running.stop(settings.grace)
    log.info("stopped; model checkpointed")
