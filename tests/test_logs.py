"""Logs of the real command: JSON or text lines, one access line per RPC, never a token or a user id."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import grpc
import pytest

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.auth import auth_metadata
from tests.conftest import write_tokens
from tests.servers import spawn_serve

TOKEN = "sf-" + "q" * 29
KEY = b"p" * 32


def serve_and_call(tmp_path: Path, *flags: str) -> tuple[list[str], str]:
    """Serve with ``flags``, make a few calls as a storefront would, stop; the stderr lines and the event id."""
    process, port = spawn_serve(tmp_path / "data", *flags)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            recommender = pb_grpc.RecommenderStub(channel)
            metadata = auth_metadata(TOKEN)
            request = pb.RecommendRequest(user_id="alice-raw-id", candidates=[pb.Candidate(item_id="a"),
                                                                              pb.Candidate(item_id="b")])
            event_id = recommender.Recommend(request, metadata=metadata).event_id
            recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=1.0), metadata=metadata)
            for call in (lambda: recommender.Recommend(pb.RecommendRequest(), metadata=metadata),
                         lambda: recommender.Recommend(request)):  # no user id; no token (when tokens are on)
                try:
                    call()
                except grpc.RpcError:
                    pass
    finally:
        process.terminate()
        process.wait(timeout=30)
    stderr = (tmp_path / "data.log").read_text()
    assert process.returncode == 0, stderr
    return stderr.splitlines(), event_id


def test_json_logs_have_an_access_line_per_rpc_and_no_token_or_user_id(tmp_path: Path) -> None:
    key = tmp_path / "user.key"
    key.write_bytes(KEY)
    tokens = write_tokens(tmp_path / "tokens", {"storefront": TOKEN})
    lines, event_id = serve_and_call(tmp_path, "--log-format", "json", "--auth-tokens", str(tokens),
                                     "--pseudonymize-user-ids", str(key))
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    lifecycle = [r for r in records if r["logger"] == "server.app"]
    assert lifecycle[0]["message"].startswith("listening on 127.0.0.1:") and lifecycle[0]["port"] > 0
    assert lifecycle[-1]["message"] == "stopped; model checkpointed"
    access = [(r["method"], r["code"], r["event_id"]) for r in records if r["logger"] == "recbandit.access"]
    assert access == [("Recommend", "OK", event_id), ("Feedback", "OK", event_id),
                      ("Recommend", "INVALID_ARGUMENT", ""), ("Recommend", "UNAUTHENTICATED", "")]
    assert all(r["duration_ms"] >= 0 and {"time", "level", "message"} <= r.keys()
               for r in records if r["logger"] == "recbandit.access")
    everything = "\n".join(lines)
    pseudonym = hmac.new(KEY, b"alice-raw-id", hashlib.sha256).hexdigest()
    assert TOKEN not in everything and "alice-raw-id" not in everything and pseudonym not in everything


def test_text_logs_and_no_access_log(tmp_path: Path) -> None:
    lines, event_id = serve_and_call(tmp_path)
    recommended = [line for line in lines if "INFO recbandit.access: Recommend OK " in line]
    assert len(recommended) == 2  # without tokens the call that sends none is answered too
    assert recommended[0].endswith(f" ms event_id='{event_id}'")
    quiet, _ = serve_and_call(tmp_path / "quiet", "--no-access-log")
    assert not [line for line in quiet if "recbandit.access" in line]


def test_a_call_cancelled_while_it_runs_is_logged_as_cancelled_not_ok(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    from server.bench import InProcessContext
    from server.errors import InFlight, rpc

    class Slow:
        in_flight = InFlight()

        @rpc
        async def Recommend(self, request: pb.RecommendRequest, context: object) -> None:
            await asyncio.sleep(10)

    async def cancelled_midway() -> None:
        call = asyncio.create_task(Slow().Recommend(pb.RecommendRequest(), InProcessContext()))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

    caplog.set_level(logging.INFO, logger="recbandit.access")
    asyncio.run(cancelled_midway())
    assert [r.getMessage().split(" ms")[0].rsplit(" ", 1)[0] for r in caplog.records] == ["Recommend CANCELLED"]
    assert Slow.in_flight.count == 0
