"""Fixtures that start a real recbandit server on 127.0.0.1 (port 0) with a temporary data dir."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.app import RunningServer, start
from server.settings import Settings


def stubs(port: int) -> SimpleNamespace:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return SimpleNamespace(
        channel=channel,
        recommender=pb_grpc.RecommenderStub(channel),
        catalog=pb_grpc.CatalogStub(channel),
        admin=pb_grpc.AdminStub(channel),
    )


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., tuple[RunningServer, SimpleNamespace]]]:
    """Start servers with ``Settings`` overrides; every one still running is stopped afterwards."""
    running: list[tuple[RunningServer, SimpleNamespace]] = []

    def _start(**overrides: object) -> tuple[RunningServer, SimpleNamespace]:
        settings = dataclasses.replace(
            Settings(host="127.0.0.1", port=0, data_dir=str(tmp_path / "data")), **overrides
        )
        server = start(settings)
        client = stubs(server.port)
        running.append((server, client))
        return server, client

    yield _start
    for server, client in running:
        client.channel.close()
        if not server.engine._stopping.is_set():
            server.stop(grace=1.0)


@pytest.fixture
def server(start_server: Callable[..., tuple[RunningServer, SimpleNamespace]]) -> tuple[RunningServer, SimpleNamespace]:
    return start_server()
