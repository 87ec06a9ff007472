"""server.client against real servers: typed round trips, retries across a restart and a lost reply,
no retry where a retry cannot help, tokens and mTLS, and the bounds of a call with no server."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.bench import free_port
from server.client import (
    Candidate,
    Explanation,
    Item,
    ItemsPage,
    LearningReport,
    RankedItem,
    RecbanditCallError,
    RecbanditClient,
    Recommendation,
    Status,
    Tls,
    Verdict,
)
from tests.conftest import write_tokens
from tests.servers import spawn_serve

CANDIDATES = [Candidate(f"i{j}", {"category": f"c{j % 2}", "price": 10.0 + j}) for j in range(5)]


def client_of(running, **options: object) -> RecbanditClient:  # type: ignore[no-untyped-def]
    return RecbanditClient(f"127.0.0.1:{running.port}", **options)  # type: ignore[arg-type]


def test_recommend_feedback_and_activate_round_trip_as_typed_values(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    with client_of(running) as client:
        page = client.recommend(
            "u1",
            user_features={"segment": "sporty", "age": 31, "member": True, "tags": ["run", "hike"]},
            context={"channel": "app"},
            candidates=[*CANDIDATES[:3], "i3", "i4"],
            num_results=2,
            exclude_item_ids=["i4"],
        )
        assert isinstance(page, Recommendation) and len(page.event_id) == 32 and int(page.event_id, 16) >= 0
        logged = running.engine.log.get_decision(page.event_id)
        assert page.items == tuple(RankedItem(s.item_id, s.probability, i) for i, s in enumerate(logged.slots))
        assert page.model_version == logged.model_version and len(set(page.item_ids)) == 2
        assert logged.user_features == {"segment": "sporty", "age": 31.0, "member": True, "tags": ("run", "hike")}
        assert [c.item_id for c in logged.candidates] == ["i0", "i1", "i2", "i3"]
        assert logged.candidates[2].features == {"category": "c0", "price": 12.0}

        assert client.recommend("u1", candidates=CANDIDATES, num_results=2, event_id=page.event_id) == page
        assert client.feedback(page.event_id, 1.0, label="click") is Status.NEW
        assert client.feedback(page.event_id, 1.0, label="click") is Status.DUPLICATE
        assert client.feedback(page.event_id, 25.0, item_id=page.items[1].item_id, label="purchase") is Status.NEW

        deferred = client.recommend("u2", candidates=CANDIDATES, defer_activation=True, event_id="email-7")
        assert deferred.event_id == "email-7" and running.engine.log.get_decision("email-7").deferred
        assert client.activate("email-7") is Status.NEW
        assert client.activate("email-7") is Status.DUPLICATE
    assert running.engine.log.reader.counts()["decisions"] == 2 and running.engine.log.reader.counts()["rewards"] == 2


def test_catalog_calls_round_trip_and_page_through_every_item(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    items = [Item(f"sku-{i:02d}", {"category": "shoes", "colours": ("red", "blue"), "price": 20.0 + i}, active=i != 3)
             for i in range(25)]
    with client_of(running) as client:
        assert client.upsert_items(items) == 25
        assert client.delete_items(["sku-05", "missing"]) == 1
        first = client.list_items(page_size=10)
        assert isinstance(first, ItemsPage) and first.next_page_token
        assert first.items == tuple(i for i in items if i.item_id != "sku-05")[:10]
        every = list(client.iter_items(page_size=7))
        assert [i.item_id for i in every] == [i.item_id for i in items if i.item_id != "sku-05"]
        assert every[3] == items[3] and not every[3].active
        assert [i.item_id for i in client.iter_items(active_only=True)] == [
            i.item_id for i in items if i.item_id not in ("sku-03", "sku-05")]
        page = client.recommend("u1", num_results=3, exclude_item_ids=["sku-00"])
        assert not {"sku-00", "sku-03", "sku-05"} & set(page.item_ids)


def test_invalid_argument_is_raised_at_once_with_code_and_message(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    with client_of(running, retries=5) as client:
        with pytest.raises(RecbanditCallError) as refused:
            client.recommend("u1", candidates=CANDIDATES, num_results=6)
        error = refused.value
        assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details() == "num_results: must be at most the 5 candidates left, got 6"
        assert (error.method, error.attempts, len(error.event_id)) == ("Recommend", 1, 32)
        assert str(error) == ("Recommend failed with INVALID_ARGUMENT after 1 attempt: "
                              "num_results: must be at most the 5 candidates left, got 6")
        with pytest.raises(RecbanditCallError) as unknown:
            client.feedback("nope", 1.0)
        assert (unknown.value.code(), unknown.value.details(), unknown.value.attempts) == (
            grpc.StatusCode.NOT_FOUND, "event_id: no decision with event_id 'nope'", 1)
    assert running.engine.log.reader.counts()["decisions"] == 0


def test_features_are_plain_values_and_anything_else_is_named_before_a_call(server) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    running, _ = server
    with client_of(running) as client:
        page = client.recommend("u1", user_features={"age": np.int64(31), "vip": True, "tags": ["run"]},
                                candidates=CANDIDATES)
        logged = running.engine.log.get_decision(page.event_id)
        assert dict(logged.user_features) == {"age": 31.0, "vip": True, "tags": ("run",)}
        with pytest.raises(TypeError, match=r"^feature 'age': NoneType is not a str, a number, a bool or a list of str$"):
            client.recommend("u1", user_features={"age": None}, candidates=CANDIDATES)
    assert running.engine.log.reader.counts()["decisions"] == 1


def test_the_diagnostics_an_operator_asks_for_come_back_typed(server) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    with client_of(running) as client:
        page = client.recommend("u1", user_features={"segment": "sporty"}, candidates=CANDIDATES)
        why = client.explain(page.event_id, max_features=3)
        assert isinstance(why, Explanation) and (why.item_id, why.slot) == (page.item_ids[0], 0)
        logged = running.engine.log.get_decision(page.event_id)
        assert why.pmf == tuple(zip((c.item_id for c in CANDIDATES), logged.slots[0].pmf, strict=True))
        assert why.model_version == page.model_version and len(why.contributions) <= 3
        report = client.learning_report(window_seconds=3600)
        assert isinstance(report, LearningReport) and report.overall.verdict is Verdict.NO_DATA
        assert report.overall.observed is None and report.window_end - report.window_start == 3600
        with pytest.raises(RecbanditCallError) as refused:
            client.explain(page.event_id, "not-a-candidate")
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND and refused.value.attempts == 1


def test_tokens_and_mtls_work_through_the_client(start_server, tls_files, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tokens = {"storefront": "storefront-token-4f1c9a2e", "catalog": "catalog-token-8b3d7e60"}
    running, _ = start_server(tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                              tls_client_ca=str(tls_files.ca_cert),
                              auth_tokens=str(write_tokens(tmp_path / "tokens", tokens)))
    tls = Tls.from_files(tls_files.ca_cert, tls_files.client_cert, tls_files.client_key)
    with client_of(running, token=tokens["catalog"], tls=tls) as catalog:
        assert catalog.upsert_items([Item("sku-1", {"category": "shoes"})]) == 1
    with client_of(running, token=tokens["storefront"], tls=tls) as storefront:
        page = storefront.recommend("u1")
        assert page.item_ids == ("sku-1",) and storefront.feedback(page.event_id, 1.0) is Status.NEW
        with pytest.raises(RecbanditCallError) as refused:
            storefront.delete_items(["sku-1"])
        assert (refused.value.code(), refused.value.attempts) == (grpc.StatusCode.PERMISSION_DENIED, 1)
    with client_of(running, tls=tls) as anonymous, pytest.raises(RecbanditCallError) as unknown:
        anonymous.recommend("u1")
    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with client_of(running, token=tokens["storefront"], tls=Tls.from_files(tls_files.ca_cert), retries=0) as no_cert:
        with pytest.raises(RecbanditCallError) as handshake:
            no_cert.recommend("u1")
    assert handshake.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ValueError, match="certificate_chain and private_key go together"):
        Tls(certificate_chain=b"pem")


def test_without_a_server_a_call_fails_unavailable_within_its_bounds() -> None:
    target = f"127.0.0.1:{free_port()}"
    with RecbanditClient(target, retries=3, deadline=30.0) as client:
        began = time.monotonic()
        with pytest.raises(RecbanditCallError) as attempts_spent:
            client.feedback("e1", 1.0)
        assert (attempts_spent.value.code(), attempts_spent.value.attempts) == (grpc.StatusCode.UNAVAILABLE, 4)
        assert time.monotonic() - began < 15.0  # the pauses add up to 0.7 s at most
    with RecbanditClient(target, retries=1000, deadline=1.0) as client:
        began = time.monotonic()
        with pytest.raises(RecbanditCallError) as time_spent:
            client.recommend("u1", candidates=["i0"])
        assert time_spent.value.code() == grpc.StatusCode.UNAVAILABLE and 1 < time_spent.value.attempts < 1001
        assert time.monotonic() - began < 6.0


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_retries_find_a_restarted_server_on_the_same_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, port = tmp_path / "data", free_port()
    flags = ("--no-access-log", "--port", str(port), "--seed", "5")
    processes = [spawn_serve(data, *flags)[0]]
    try:
        with RecbanditClient(f"127.0.0.1:{port}", deadline=90.0, retries=1000) as client:
            before = client.recommend("u1", candidates=CANDIDATES, num_results=2)
            stop(processes[0])

            def restart() -> None:
                time.sleep(0.5)
                processes.append(spawn_serve(data, *flags)[0])

            restarter = threading.Thread(target=restart)
            restarter.start()
            with caplog.at_level(logging.INFO, logger="server.client"):
                again = client.recommend("u1", candidates=CANDIDATES, num_results=2, event_id=before.event_id)
            restarter.join()
            assert again == before  # decided before the restart, found in the same data dir
            assert any("Recommend: UNAVAILABLE" in r.getMessage() for r in caplog.records)
            assert client.feedback(before.event_id, 1.0) is Status.NEW
            assert client.recommend("u2", candidates=CANDIDATES).event_id != before.event_id
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


class LosingProxy:
    """A TCP relay to 127.0.0.1:``port`` that loses the server's reply on its first connection.

    Once the client's bytes hold ``request_marker``, nothing more is passed back to the client; when
    the server's bytes hold ``reply_marker`` (it answered), both sides are cut. Later connections
    are relayed whole.
    """

    def __init__(self, port: int, request_marker: bytes, reply_marker: bytes) -> None:
        self.upstream = port
        self.request_marker, self.reply_marker = request_marker, reply_marker
        self.connections = 0
        self.lost_replies = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            losing = self.connections == 1
            sent = threading.Event()
            threading.Thread(target=self._requests, args=(downstream, upstream, losing, sent), daemon=True).start()
            threading.Thread(target=self._replies, args=(upstream, downstream, losing, sent), daemon=True).start()

    def _requests(self, source: socket.socket, sink: socket.socket, losing: bool, sent: threading.Event) -> None:
        seen = b""
        for chunk in _chunks(source):
            if losing:
                seen += chunk
                if self.request_marker in seen:
                    sent.set()
            sink.sendall(chunk)
        _cut(sink)

    def _replies(self, source: socket.socket, sink: socket.socket, losing: bool, sent: threading.Event) -> None:
        lost = b""
        for chunk in _chunks(source):
            if not (losing and sent.is_set()):
                try:
                    sink.sendall(chunk)
                except OSError:  # the client hung up (it retries on a new connection): nobody to reply to
                    break
                continue
            lost += chunk
            if self.reply_marker in lost:
                self.lost_replies += 1
                break
        _cut(sink)
        _cut(source)


def _chunks(source: socket.socket) -> Iterator[bytes]:
    try:
        while chunk := source.recv(65536):
            yield chunk
    except OSError:
        return


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def test_a_lost_reply_is_retried_into_the_same_decision(server, caplog) -> None:  # type: ignore[no-untyped-def]
    running, _ = server
    candidates = [Candidate(f"lost-reply-item-{j}", {"price": 10.0 + j}) for j in range(5)]
    proxy = LosingProxy(running.port, b"lost-reply-user", b"lost-reply-item-")
    try:
        with RecbanditClient(f"127.0.0.1:{proxy.port}", deadline=30.0) as client:
            with caplog.at_level(logging.INFO, logger="server.client"):
                page = client.recommend("lost-reply-user", candidates=candidates, num_results=2)
    finally:
        proxy.close()
    assert (proxy.lost_replies, proxy.connections) == (1, 2)  # answered once, lost, asked again
    assert any("Recommend: UNAVAILABLE" in r.getMessage() for r in caplog.records)
    assert running.engine.log.reader.counts()["decisions"] == 1
    logged = running.engine.log.get_decision(page.event_id)
    assert page.items == tuple(RankedItem(s.item_id, s.probability, i) for i, s in enumerate(logged.slots))
    assert not logged.undelivered  # the retry took the decision to its caller


def test_a_storefront_imports_the_client_without_the_engines_serving_code() -> None:
    script = ("import sys, server.client; print(sorted(m for m in ('numpy', 'vowpalwabbit', 'engine.core', "
              "'engine.report', 'engine.explain', 'server.settings', 'server.converters', 'mlflow') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    assert loaded == "[]"
