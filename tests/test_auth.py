"""TLS, mTLS, tokens and roles, through a real server and real clients."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine.errors import ConfigurationError
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.auth import ROLES, TokenFileError, Tokens, auth_metadata, method_roles
from server.settings import Settings
from server.transport import is_loopback, server_credentials
from tests.servers import spawn_serve
from tests.conftest import write_tokens

TOKENS = {"storefront": "sf-" + "a" * 29, "catalog": "cat-" + "b" * 28, "admin": "adm-" + "c" * 28}
SERVING = health_pb2.HealthCheckResponse.SERVING

# One harmless call per service, for the role matrix.
CALLS = {
    "Recommender": lambda c, md: c.recommender.Recommend(
        pb.RecommendRequest(user_id="u", candidates=[pb.Candidate(item_id="i1"), pb.Candidate(item_id="i2")]),
        metadata=md),
    "Catalog": lambda c, md: c.catalog.ListItems(pb.ListItemsRequest(), metadata=md),
    "Admin": lambda c, md: c.admin.GetModelInfo(pb.GetModelInfoRequest(), metadata=md),
}
ALLOWED = {"storefront": {"Recommender"}, "catalog": {"Recommender", "Catalog"}, "admin": set(CALLS)}


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    try:
        call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def clients(channel: grpc.Channel) -> SimpleNamespace:
    return SimpleNamespace(channel=channel, recommender=pb_grpc.RecommenderStub(channel),
                           catalog=pb_grpc.CatalogStub(channel), admin=pb_grpc.AdminStub(channel))


@pytest.fixture
def authed(start_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    running, client = start_server(auth_tokens=str(write_tokens(tmp_path / "tokens", TOKENS)))
    return running, client


def test_every_rpc_declares_the_least_role_that_may_call_it() -> None:
    roles = method_roles()
    names = {f"/{s.full_name}/{m.name}" for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert set(roles) == names
    assert roles["/recbandit.v1.Recommender/Feedback"] == pb.ROLE_STOREFRONT
    assert roles["/recbandit.v1.Catalog/DeleteItems"] == pb.ROLE_CATALOG
    assert roles["/recbandit.v1.Admin/ForgetUser"] == roles["/recbandit.v1.Admin/Checkpoint"] == pb.ROLE_ADMIN


def test_each_role_calls_its_services_and_is_denied_the_rest(authed, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    _, client = authed
    for role, token in TOKENS.items():
        for service, call in CALLS.items():
            code = code_of(lambda: call(client, auth_metadata(token)))
            expected = grpc.StatusCode.OK if service in ALLOWED[role] else grpc.StatusCode.PERMISSION_DENIED
            assert code == expected, (role, service)
    for service, call in CALLS.items():
        assert code_of(lambda: call(client, None)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: call(client, auth_metadata("x" * 32))) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: call(client, (("authorization", "Basic " + TOKENS["admin"]),))) == \
            grpc.StatusCode.UNAUTHENTICATED
        twice = (*auth_metadata(TOKENS["storefront"]), *auth_metadata(TOKENS["admin"]))
        assert code_of(lambda: call(client, twice)) == grpc.StatusCode.UNAUTHENTICATED
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert not any(token in logged for token in TOKENS.values())


def test_a_denied_call_says_which_role_it_needs(authed) -> None:  # type: ignore[no-untyped-def]
    _, client = authed
    with pytest.raises(grpc.RpcError) as error:
        client.catalog.DeleteItems(pb.DeleteItemsRequest(item_ids=["i1"]), metadata=auth_metadata(TOKENS["storefront"]))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.value.details() == ("the storefront role may not call /recbandit.v1.Catalog/DeleteItems; "
                                     "it needs catalog")


def test_health_check_is_open_and_watch_and_reflection_need_a_token(authed) -> None:  # type: ignore[no-untyped-def]
    _, client = authed
    health = health_pb2_grpc.HealthStub(client.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == SERVING
    assert code_of(lambda: next(health.Watch(health_pb2.HealthCheckRequest(), timeout=5))) == \
        grpc.StatusCode.UNAUTHENTICATED
    watched = health.Watch(health_pb2.HealthCheckRequest(), metadata=auth_metadata(TOKENS["storefront"]), timeout=5)
    assert next(watched).status == SERVING
    watched.cancel()
    reflection = reflection_pb2_grpc.ServerReflectionStub(client.channel)

    def list_services(metadata):  # type: ignore[no-untyped-def]
        request = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        return [s.name for a in reflection.ServerReflectionInfo(request, metadata=metadata)
                for s in a.list_services_response.service]

    assert code_of(lambda: list_services(None)) == grpc.StatusCode.UNAUTHENTICATED
    assert "recbandit.v1.Admin" in list_services(auth_metadata(TOKENS["storefront"]))


def test_tokens_reload_keeps_the_old_ones_when_the_file_is_bad(tmp_path: Path) -> None:
    path = write_tokens(tmp_path / "tokens", {"admin": TOKENS["admin"]})
    tokens = Tokens(path)
    assert tokens.role_of(TOKENS["admin"]) == pb.ROLE_ADMIN and tokens.role_of(TOKENS["catalog"]) is None
    path.write_text(f"admin {TOKENS['admin']}\nwizard {TOKENS['catalog']}\n")
    assert not tokens.reload()
    assert tokens.role_of(TOKENS["admin"]) == pb.ROLE_ADMIN
    write_tokens(path, {"catalog": TOKENS["catalog"]})
    assert tokens.reload()
    assert tokens.role_of(TOKENS["admin"]) is None and tokens.role_of(TOKENS["catalog"]) == pb.ROLE_CATALOG


@pytest.mark.parametrize("content, message", [
    ("admin short\n", "line 1: the token must have at least 16 characters"),
    (f"# rotated weekly\n\nroot {TOKENS['admin']}\n", "line 3: must start with a role, one of storefront, catalog, admin"),
    (f"{TOKENS['admin']} admin\n", "line 1: must start with a role"),  # columns swapped: the token is not echoed
    (f"admin {TOKENS['admin']} extra\n", "line 1: must be 'ROLE TOKEN', got 3 words"),
    (f"admin {TOKENS['admin']}\ncatalog {TOKENS['admin']}\n", "line 2: the same token is given twice"),
    ("# nothing\n", "holds no tokens"),
])
def test_a_bad_tokens_file_names_the_line_and_never_the_token(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(TokenFileError, match=message) as error:
        Tokens(path)
    assert TOKENS["admin"][:6] not in str(error.value)
    assert set(ROLES) == {"storefront", "catalog", "admin"}


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(start_server, tls_files) -> None:  # type: ignore[no-untyped-def]
    running, _ = start_server(tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key))
    credentials = grpc.ssl_channel_credentials(root_certificates=tls_files.ca_cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{running.port}", credentials) as channel:
        assert code_of(lambda: CALLS["Recommender"](clients(channel), None)) == grpc.StatusCode.OK
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        assert code_of(lambda: clients(channel).admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)) == \
            grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_signed_by_the_ca(start_server, tls_files) -> None:  # type: ignore[no-untyped-def]
    running, _ = start_server(tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                              tls_client_ca=str(tls_files.ca_cert))
    ca = tls_files.ca_cert.read_bytes()
    target = f"127.0.0.1:{running.port}"
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca)) as channel:
        assert code_of(lambda: clients(channel).admin.GetModelInfo(pb.GetModelInfoRequest(), timeout=2)) == \
            grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(ca, tls_files.client_key.read_bytes(), tls_files.client_cert.read_bytes())
    with grpc.secure_channel(target, with_cert) as channel:
        assert code_of(lambda: clients(channel).admin.GetModelInfo(pb.GetModelInfoRequest())) == grpc.StatusCode.OK


def test_plaintext_is_refused_off_loopback_unless_insecure_is_allowed(tls_files) -> None:  # type: ignore[no-untyped-def]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("shop.example")
    with pytest.raises(ConfigurationError, match=r"^host: 0.0.0.0 is not a loopback address: serve TLS .* --allow-insecure"):
        server_credentials(Settings(host="0.0.0.0"))
    assert server_credentials(Settings(host="0.0.0.0", allow_insecure=True)) is None
    assert server_credentials(Settings(host="0.0.0.0", tls_cert=str(tls_files.server_cert),
                                       tls_key=str(tls_files.server_key))) is not None
    with pytest.raises(ConfigurationError, match="--tls-cert and --tls-key go together"):
        server_credentials(Settings(tls_cert=str(tls_files.server_cert)))
    with pytest.raises(ConfigurationError, match=r"^tls_key: .* is not a PEM file"):
        server_credentials(Settings(tls_cert=str(tls_files.server_cert), tls_key=os.devnull))


def test_serve_rotates_tokens_on_sighup(tmp_path: Path) -> None:
    """The real command: a new token works and the old one stops working, with no restart."""
    tokens = write_tokens(tmp_path / "tokens", {"admin": TOKENS["admin"]})
    process, port = spawn_serve(tmp_path / "data", "--auth-tokens", str(tokens))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            admin = pb_grpc.AdminStub(channel)

            def info(token: str) -> grpc.StatusCode:
                return code_of(lambda: admin.GetModelInfo(pb.GetModelInfoRequest(), metadata=auth_metadata(token)))

            assert info(TOKENS["admin"]) == grpc.StatusCode.OK
            rotated = "adm-" + "z" * 28
            write_tokens(tokens, {"admin": rotated})
            process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while info(rotated) != grpc.StatusCode.OK and time.monotonic() < deadline:
                time.sleep(0.05)
            assert info(rotated) == grpc.StatusCode.OK
            assert info(TOKENS["admin"]) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert process.returncode == 0
    stderr = (tmp_path / "data.log").read_text()
    assert "listening on" in stderr and TOKENS["admin"] not in stderr and rotated not in stderr


def test_a_key_that_does_not_match_its_certificate_is_refused_before_anything_starts(tls_files) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=r"^tls_cert: .*server\.pem with the key .*client\.key does not load"):
        server_credentials(Settings(tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.client_key)))
    with pytest.raises(ConfigurationError, match=r"^tls_client_ca: .* is not a PEM file"):
        server_credentials(Settings(tls_cert=str(tls_files.server_cert), tls_key=str(tls_files.server_key),
                                    tls_client_ca=os.devnull))
