"""Fixtures that start a real recbandit server on 127.0.0.1 (port 0) with a temporary data dir."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from engine.records import JoinedEvent
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.app import RunningServer, start
from server.settings import Settings
from training.registry import RegistryPolicySource


def stubs(port: int) -> SimpleNamespace:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return SimpleNamespace(
        channel=channel,
        recommender=pb_grpc.RecommenderStub(channel),
        catalog=pb_grpc.CatalogStub(channel),
        admin=pb_grpc.AdminStub(channel),
    )


class Traffic:
    """``call(n)`` for n = 0, 1, … from several threads until the block ends: every result, every failure."""

    def __init__(self, call: Callable[[int], object], threads: int = 3) -> None:
        self.results: list[object] = []
        self.failures: list[BaseException] = []
        self._call = call
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            n = next(self._counter)
            try:
                self.results.append(self._call(n))
            except BaseException as error:  # noqa: BLE001 - every failure counts
                self.failures.append(error)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


POSTGRES = os.environ.get("RECBANDIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL database tests make their schemas in (trust auth on 127.0.0.1 by default)."""


def exported(events: Iterable[object]) -> list[dict[str, object]]:
    """Joined events (or export records) as the JSON Lines export reads them back: tuples become lists."""
    return [json.loads(json.dumps(e.to_export() if isinstance(e, JoinedEvent) else e)) for e in events]


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a new, empty schema of :data:`POSTGRES`, dropped with everything in it afterwards."""
    import psycopg

    name = f"recbandit_test_{os.urandom(6).hex()}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where an event log lives, on each backend: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield str(tmp_path / "events.db")
    else:
        with postgres_schema() as url:
            yield url


def execute(store: str, sql: str) -> None:
    """Run one statement on ``store`` outside recbandit (to age, break or inspect a log)."""
    if store.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store, autocommit=True) as conn:
            conn.execute(sql)
    else:
        with sqlite3.connect(store) as conn:
            conn.execute(sql)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., tuple[RunningServer, SimpleNamespace]]]:
    """Start servers with ``Settings`` overrides; every one still running is stopped afterwards."""
    running: list[tuple[RunningServer, SimpleNamespace]] = []

    def _start(**overrides: object) -> tuple[RunningServer, SimpleNamespace]:
        settings = Settings(**{"host": "127.0.0.1", "port": 0, "data_dir": str(tmp_path / "data"), **overrides})
        server = start(settings, _policy_source(settings.policy_registry))
        client = stubs(server.port)
        running.append((server, client))
        return server, client

    yield _start
    for server, client in running:
        client.channel.close()
        if not server.engine._stopping.is_set():
            server.stop(grace=1.0)


def _policy_source(registry: str) -> RegistryPolicySource | None:
    """What ``recbandit serve`` hands a server for ``--policy-registry``: the MLflow registry's champion."""
    return RegistryPolicySource(registry) if registry else None


@pytest.fixture
def server(start_server: Callable[..., tuple[RunningServer, SimpleNamespace]]) -> tuple[RunningServer, SimpleNamespace]:
    return start_server()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate, made by openssl."""
    folder = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *key, "-subj", "/CN=recbandit-test-ca", "-days", "2", "-keyout", "ca.key", "-out", "ca.pem")
    for name, san in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "subjectAltName=DNS:storefront")):
        openssl("req", *key, "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (folder / f"{name}.ext").write_text(san + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return SimpleNamespace(**{f"{n}_{part}": folder / f"{n}.{ext}" for n in ("ca", "server", "client")
                              for part, ext in (("cert", "pem"), ("key", "key"))})


def write_tokens(path: Path, tokens: dict[str, str]) -> Path:
    """A tokens file with one ``ROLE TOKEN`` line per role."""
    path.write_text("".join(f"{role} {token}\n" for role, token in tokens.items()))
    path.chmod(0o600)
    return path
