"""Build, start and stop a recbandit server.

``build_server`` binds the address and returns the port (so tests can bind port 0). Health says
SERVING only once the engine has loaded its model; on SIGTERM/SIGINT :func:`serve` sets
NOT_SERVING, lets in-flight RPCs finish within the grace period, checkpoints and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine.core import Engine
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.servicers import AdminServicer, CatalogServicer, RecommenderServicer
from server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAMES = tuple(service.full_name for service in pb.DESCRIPTOR.services_by_name.values())


def build_server(settings: Settings, engine: Engine) -> tuple[grpc.Server, int, health.HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"))
    pb_grpc.add_RecommenderServicer_to_server(RecommenderServicer(engine), server)
    pb_grpc.add_CatalogServicer_to_server(CatalogServicer(engine), server)
    pb_grpc.add_AdminServicer_to_server(AdminServicer(engine), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    if settings.reflection:
        names = (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    return server, port, health_servicer


@dataclass
class RunningServer:
    """A started server and its engine, stopped together."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    engine: Engine

    def stop(self, grace: float) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.engine.close()


def start(settings: Settings) -> RunningServer:
    engine = Engine(settings.engine_config())
    try:
        server, port, health_servicer = build_server(settings, engine)
    except BaseException:
        engine.close()
        raise
    server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, health_servicer, engine)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain, checkpoint and return."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    running = start(settings)
    info = running.engine.model_info()
    print(
        f"recbandit listening on {settings.host}:{running.port} "
        f"(data {settings.data_dir}, model {info.model_version}, exploration {info.bandit.exploration})",
        flush=True,
    )
    stop.wait()
    log.info("stopping: draining RPCs for up to %.1fs, then checkpointing", settings.grace)
    running.stop(settings.grace)
    print("recbandit stopped; model checkpointed", flush=True)
