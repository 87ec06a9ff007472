"""Storage you can trust: one engine per data directory, private files, and no checkpoint that does
not match its model file or its event log; ``rebuild-model`` is the way back from a refused one."""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from engine.checkpoint import MANIFEST, read_checkpoint
from engine.core import Engine, EngineConfig
from engine.errors import CorruptCheckpoint, StartupRefused
from engine.eventlog import EventLog
from engine.records import LoggedDecision, Reward, SlotChoice
from engine.rewards import RewardRules
from engine.types import Candidate
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.cli import main

WAY_OUT = r"run `recbandit rebuild-model --data-dir .*` to rebuild the model from the event log"


def play(client, count: int, offset: int = 0) -> None:  # type: ignore[no-untyped-def]
    """``count`` Recommend calls over six candidates, each clicked or not through Feedback."""
    for i in range(offset, offset + count):
        request = pb.RecommendRequest(user_id=f"u{i % 5}", candidates=[pb.Candidate(item_id=f"i{j}") for j in range(6)])
        request.user_features["segment"].string_value = f"s{i % 3}"
        event_id = client.recommender.Recommend(request).event_id
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, reward=float(i % 2)))


def learned_and_stopped(start_server: Callable, count: int = 30, offset: int = 0) -> None:  # type: ignore[type-arg]
    """Start a server on the test's data directory, play ``count`` visits, learn them and stop (checkpoint)."""
    running, client = start_server()
    play(client, count, offset)
    assert running.engine.wait_until_learned()
    client.channel.close()
    running.stop(grace=1.0)


# -- 7a: one engine per data directory -------------------------------------------------------------


def test_a_second_engine_or_server_on_a_data_directory_in_use_is_refused_naming_the_holder(
    start_server, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    running, client = start_server()
    data = tmp_path / "data"
    assert (data / "LOCK").read_text().strip() == str(os.getpid())
    in_use = rf"data directory {data} is in use by pid {os.getpid()} \(another recbandit server\?\)"
    with pytest.raises(StartupRefused, match=in_use):
        Engine(EngineConfig(data_dir=data))
    with pytest.raises(StartupRefused, match=in_use):
        start_server()
    play(client, 3)  # the first server is untouched by the refusals
    client.channel.close()
    running.stop(grace=1.0)
    Engine(EngineConfig(data_dir=data)).close()  # released on close


# -- 7b: private files -----------------------------------------------------------------------------


def test_the_data_directory_and_every_file_in_it_are_private(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    umask = os.umask(0o022)
    try:
        running, client = start_server()
        play(client, 10)
        assert running.engine.wait_until_learned()
        running.engine.checkpoint()
        files = [p for p in data.rglob("*") if p.is_file()]
        assert {"events.db", "events.db-wal", "LOCK", MANIFEST} <= {p.name for p in files}
        assert any(p.suffix == ".vw" for p in files)
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files if p.stat().st_mode & 0o077} == {}
        client.channel.close()
    finally:
        os.umask(umask)


# -- 7c: the model file must be the one the manifest names ------------------------------------------


def _truncate(fraction: float) -> Callable[[Path], None]:
    def damage(model: Path) -> None:
        data = model.read_bytes()
        model.write_bytes(data[: int(len(data) * fraction)])

    return damage


def _flip_one_byte(model: Path) -> None:
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncate(0.5), "does not match its sha256"),
        (_truncate(0.9), "does not match its sha256"),
        (_flip_one_byte, "does not match its sha256"),
        (Path.unlink, "is missing"),
    ],
    ids=["truncated-to-50%", "truncated-to-90%", "one-byte-flipped", "deleted"],
)
def test_a_damaged_model_file_is_refused_with_the_way_out(
    start_server, tmp_path: Path, damage: Callable[[Path], None], problem: str  # type: ignore[no-untyped-def]
) -> None:
    learned_and_stopped(start_server)
    data = tmp_path / "data"
    checkpoint = read_checkpoint(data)
    assert checkpoint is not None and set(checkpoint.checksums) == {checkpoint.model_file}
    damage(data / checkpoint.model_file)
    with pytest.raises(CorruptCheckpoint, match=f"model file {data / checkpoint.model_file} {problem}.*; {WAY_OUT}"):
        start_server()


def test_a_manifest_that_is_not_json_is_refused_with_the_way_out(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    learned_and_stopped(start_server)
    manifest = tmp_path / "data" / MANIFEST
    manifest.write_text(manifest.read_text()[:40])
    with pytest.raises(CorruptCheckpoint, match=f"{manifest} is not valid JSON .*; {WAY_OUT}") as refused:
        start_server()
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("field, value, says", [
    ("learned_seq", "abc", "learned_seq has the wrong type"),
    ("bandit", None, "bandit has the wrong type"),
    ("model_file", "../outside.vw", "model_file must be a model-\\*.vw file of the data directory"),
    ("policy", {"x": 1}, "does not load"),
    ("bandit", {"exploration": "bag", "exploration_parameter": 1e9}, "does not load"),
])
def test_a_manifest_with_wrong_fields_is_refused_with_the_way_out(  # type: ignore[no-untyped-def]
    start_server, tmp_path: Path, field: str, value: object, says: str
) -> None:
    import json

    learned_and_stopped(start_server)
    manifest = tmp_path / "data" / MANIFEST
    data = json.loads(manifest.read_text())
    data[field] = value
    manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpoint, match=f"{says}.*{WAY_OUT}") as refused:
        start_server()
    assert "\n" not in str(refused.value)


def test_a_model_learned_from_another_example_format_is_refused_and_rebuilt_in_this_one(  # type: ignore[no-untyped-def]
    start_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint written before the item id and the hour left the interactions (no ``example_format``
    in its manifest) would find few of its weights in today's lines: refused, and rebuilt from the log."""
    import json

    from engine.bandit import EXAMPLE_FORMAT

    learned_and_stopped(start_server)
    data = tmp_path / "data"
    manifest = data / MANIFEST
    fields = json.loads(manifest.read_text())
    assert fields["example_format"] == EXAMPLE_FORMAT == 2
    del fields["example_format"]
    fields["bandit"]["interactions"] = ["UI", "CI"]  # as models were learned before portraits
    manifest.write_text(json.dumps(fields))
    with pytest.raises(StartupRefused, match=f"learned from examples of format 1, and this recbandit builds format 2 .*"
                                             f"{WAY_OUT} with this format") as refused:
        start_server()
    assert "\n" not in str(refused.value)

    capsys.readouterr()
    assert main(["rebuild-model", "--data-dir", str(data)]) == 0
    rebuilt = read_checkpoint(data)
    assert rebuilt is not None and rebuilt.example_format == EXAMPLE_FORMAT
    assert rebuilt.bandit["interactions"] == ["UI", "CI", "PI"]  # today's settings, not those chosen for the old lines
    running, client = start_server()
    assert running.engine.model_info().examples_learned == 30
    client.channel.close()
    running.stop(grace=1.0)


# -- 7d: the checkpoint must belong to the log, and not be ahead of it -------------------------------


def _remove_log(data: Path) -> None:
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        (data / name).unlink(missing_ok=True)


def test_a_checkpoint_whose_event_log_was_deleted_is_refused(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    learned_and_stopped(start_server)
    _remove_log(tmp_path / "data")
    with pytest.raises(StartupRefused, match=r"belongs to another event log \(the log was replaced or deleted\?\)"
                                             rf".*restore the events\.db .*or {WAY_OUT}"):
        start_server()


def test_a_checkpoint_ahead_of_an_older_copy_of_its_log_is_refused(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, backup = tmp_path / "data", tmp_path / "backup"
    learned_and_stopped(start_server, 20)
    backup.mkdir()
    for name in ("events.db", "events.db-wal", "events.db-shm"):
        if (data / name).exists():
            shutil.copy2(data / name, backup / name)
    learned_and_stopped(start_server, 20, offset=20)
    _remove_log(data)
    for copy in backup.iterdir():
        shutil.copy2(copy, data / copy.name)
    with pytest.raises(StartupRefused, match=r"has learned outcomes up to 40 but the event log ends at 20 "
                                             rf"\(restored from an older backup\?\).*{WAY_OUT}"):
        start_server()


def _decision(event_id: str, user_id: str) -> LoggedDecision:
    ts = time.time()
    return LoggedDecision(event_id, ts, user_id, {}, {}, (Candidate("a"), Candidate("b")),
                          (SlotChoice("a", 0.5, (0.5, 0.5)),), "vw-test@0", deferred=False, deadline=ts + 60)


def test_the_log_keeps_its_id_and_its_last_assigned_seq_when_outcomes_are_deleted(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", RewardRules())
    log_id = log.reader.log_id()
    assert len(log_id) == 32 and log.last_assigned_seq() == 0
    for i, user in enumerate(("kept", "forgotten", "forgotten")):
        log.append_decision(_decision(f"e{i}", user))
        log.append_reward(Reward(f"e{i}", "", "click", 1.0, time.time()))
    log.forget_user("forgotten")
    assert (log.last_outcome_seq(), log.last_assigned_seq()) == (1, 3)
    log.close()
    reopened = EventLog(tmp_path / "events.db", RewardRules())
    assert (reopened.reader.log_id(), reopened.last_assigned_seq()) == (log_id, 3)
    reopened.close()
    assert EventLog(tmp_path / "other.db", RewardRules()).reader.log_id() != log_id


# -- 7e: rebuild-model -----------------------------------------------------------------------------


def test_rebuild_model_replays_the_log_after_a_refused_model_and_the_server_starts_again(
    start_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]  # type: ignore[no-untyped-def]
) -> None:
    learned_and_stopped(start_server, 40)
    data = tmp_path / "data"
    checkpoint = read_checkpoint(data)
    assert checkpoint is not None
    _truncate(0.5)(data / checkpoint.model_file)
    with pytest.raises(CorruptCheckpoint):
        start_server()
    capsys.readouterr()

    assert main(["rebuild-model", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rebuilt = read_checkpoint(data)
    assert rebuilt is not None and rebuilt.model_id != checkpoint.model_id
    assert out == [f"rebuild-model: learned 40 outcomes from {data / 'events.db'}; "
                   f"the model is now {rebuilt.model_id}@40 (exploration squarecb)"]
    assert [p.name.startswith(f"{MANIFEST}.bad-") for p in data.glob(f"{MANIFEST}.bad-*")] == [True]

    running, client = start_server()
    outcomes = running.engine.log.reader.counts()["outcomes"]
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.examples_learned, info.examples_pending) == (outcomes, 0) == (40, 0)
    play(client, 5, offset=40)
    assert running.engine.wait_until_learned()
    assert running.engine.model_info().examples_learned == 45


def test_embeddings_that_do_not_load_refuse_the_start_and_free_the_directory(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "embeddings").mkdir(parents=True)
    (data / "embeddings" / "embeddings.json").write_text('{"artifact": "embeddings-1.npz"}')
    (data / "embeddings" / "embeddings-1.npz").write_bytes(b"not an artifact")
    with pytest.raises(StartupRefused, match=r"embeddings\.json cannot be loaded .* remove the manifest"):
        Engine(EngineConfig(data_dir=data))
    (data / "embeddings" / "embeddings.json").unlink()
    Engine(EngineConfig(data_dir=data)).close()  # the failed start left the directory unlocked


def test_a_snapshot_of_another_example_format_is_relearned_by_the_learner_and_refused_by_a_follower(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In the store (here a SQLite file), the learner relearns the log rather than load the old layout's
    model, and a serving process keeps the model in hand until the learner publishes today's."""
    import json
    import threading
    from dataclasses import asdict, replace

    from engine.bandit import BanditConfig, VWBandit
    from engine.checkpoint import Checkpoint
    from engine.learning import Learner
    from engine.roles import ModelFollower, StoreSnapshots

    log = EventLog(tmp_path / "events.db", RewardRules())
    try:
        snapshots = StoreSnapshots(log, tmp_path / "snapshots")
        old = Checkpoint("model-old-1-1.vw", "vw-old", 0, 7, 1.0, asdict(BanditConfig()), log_id=log.reader.log_id())
        snapshots.write(VWBandit(BanditConfig()).save, replace(old, example_format=1))
        assert json.loads(log.newest_snapshot()[1])["example_format"] == 1

        follower = ModelFollower(log, snapshots, BanditConfig(), threading.Event(), poll_interval=60.0)
        assert follower.served.model_id == "vw-awaiting-learner"  # refused at start: a fresh model meanwhile
        with pytest.raises(StartupRefused, match="the learner's snapshot 1 learned from examples of format 1"):
            follower.follow()

        learner = Learner(tmp_path, log, BanditConfig(), threading.Event(), checkpoint_interval=60.0,
                          maintenance_interval=60.0, snapshots=snapshots)
        assert learner.served.model_id != "vw-old" and learner.examples_learned == 0  # relearns the log from its start
        assert "relearning the store's event log into a fresh model" in caplog.text
        learner.checkpoint()
        assert follower.follow() and follower.served.model_id == learner.served.model_id
    finally:
        log.close()
