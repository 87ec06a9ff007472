"""The ``recbandit`` command: every failure to start is one line on stderr and exit code 2, and the
flags mean what they say."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checkpoint import read_checkpoint
from engine.core import Engine, EngineConfig
from engine.datadir import unusable
from engine.types import Candidate, DecisionRequest, RewardReport
from server.cli import main
from training.registry import MODEL_NAME
from training.tracking import default_tracking_uri, tracking_client

ROOT = Path(__file__).resolve().parents[1]


def recbandit(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command to its end; one that serves instead of failing times out."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def refused(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command printed on stderr (and exited 2 with)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.returncode, len(result.stderr.splitlines())) == (2, 1), result.stderr
    return result.stderr.strip()


def serve(data: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return recbandit("serve", "--port", "0", "--data-dir", str(data), *flags)


def logged(data: Path, events: int = 3) -> None:
    """A data directory with ``events`` decisions, each rewarded, learned and checkpointed."""
    engine = Engine(EngineConfig(data_dir=data))
    try:
        for i in range(events):
            decision = engine.decide(DecisionRequest(user_id=f"u{i}", candidates=[Candidate("a"), Candidate("b")]))
            engine.record_reward(RewardReport(decision.event_id, 1.0))
        assert engine.wait_until_learned()
    finally:
        engine.close()


# -- serve: startup failures -----------------------------------------------------------------------


def test_serve_on_an_event_log_that_is_not_sqlite_prints_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "events.db").write_bytes(b"not a database, " * 512)
    assert refused(serve(data)) == (
        f"serve: the event log {data / 'events.db'} is not a readable SQLite database (file is not a database)"
    )


def test_serve_on_a_data_directory_in_use_prints_the_holders_pid(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = Engine(EngineConfig(data_dir=data))
    try:
        assert refused(serve(data)) == (
            f"serve: data directory {data} is in use by pid {os.getpid()} (another recbandit server?)"
        )
    finally:
        engine.close()


def test_serve_with_a_damaged_model_file_prints_the_way_out(tmp_path: Path) -> None:
    data = tmp_path / "data"
    logged(data)
    checkpoint = read_checkpoint(data)
    assert checkpoint is not None
    model = data / checkpoint.model_file
    model.write_bytes(model.read_bytes()[:-10])
    line = refused(serve(data))
    assert line.startswith(f"serve: the checkpoint's model file {model} does not match its sha256")
    assert line.endswith(f"run `recbandit rebuild-model --data-dir {data}` to rebuild the model from the event log")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare: a private mount namespace for a read-only tmpfs")
def test_serve_on_a_read_only_file_system_says_read_only(tmp_path: Path) -> None:
    """A read-only tmpfs in a mount namespace of its own: root ignores mode bits, not a read-only mount."""
    mount_point = tmp_path / "readonly"
    mount_point.mkdir()
    data = mount_point / "data"
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(mount_point),
         sys.executable, "-m", "server.cli", "serve", "--port", "0", "--data-dir", str(data)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert refused(result) == f"serve: data directory {data} is on a read-only file system"


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (errno.EROFS, "is on a read-only file system"),
        (errno.EACCES, "is not writable by this user (Permission denied: d/LOCK)"),
        (errno.EPERM, "is not writable by this user (Operation not permitted: d/LOCK)"),
        (errno.ENOSPC, "cannot be used (No space left on device: d/LOCK)"),
    ],
)
def test_why_a_data_directory_cannot_be_used(code: int, says: str) -> None:
    assert str(unusable(Path("d"), OSError(code, os.strerror(code), "d/LOCK"))) == f"data directory d {says}"


def test_a_second_server_on_a_port_in_use_is_refused(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, _ = start_server()
    with pytest.raises(OSError, match=rf"cannot bind 127\.0\.0\.1:{first.port}: the address is in use"):
        start_server(port=first.port, data_dir=str(tmp_path / "second"))
    line = refused(recbandit("serve", "--port", str(first.port), "--data-dir", str(tmp_path / "third")))
    assert line.startswith(f"serve: cannot bind 127.0.0.1:{first.port}: the address is in use")


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_serve_refuses_a_port_outside_0_to_65535(tmp_path: Path, port: str) -> None:
    data = tmp_path / "data"
    assert refused(recbandit("serve", "--port", port, "--data-dir", str(data))) == (
        f"serve: port: must be within 0..65535, got {port}"
    )
    assert not data.exists()


def test_serve_refuses_bad_edge_settings_in_one_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("root 0123456789abcdef0123\n")
    data = tmp_path / "data"
    assert refused(serve(data, "--auth-tokens", str(tokens))) == (
        f"serve: {tokens}, line 1: must start with a role, one of storefront, catalog, admin")
    assert refused(serve(data, "--auth-tokens", str(tmp_path / "none.txt"))) == (
        f"serve: {tmp_path / 'none.txt'}: cannot read the tokens (No such file or directory)")
    assert refused(serve(data, "--pseudonymize-user-ids", str(tmp_path / "none.key"))) == (
        f"serve: {tmp_path / 'none.key'}: cannot read the pseudonymisation key (No such file or directory)")
    assert refused(serve(data, "--host", "0.0.0.0")) == (
        "serve: host: 0.0.0.0 is not a loopback address: serve TLS (--tls-cert, --tls-key) or say --allow-insecure")
    assert refused(serve(data, "--max-in-flight", "0")) == "serve: max_in_flight: must be at least 1, got 0"
    assert refused(serve(data, "--metrics-port", "9100", "--metrics-host", "0.0.0.0")) == (
        "serve: metrics_host: 0.0.0.0 is not a loopback address, and the metrics endpoint has no "
        "authentication: say --allow-insecure to serve it there")
    assert "0123456789abcdef" not in str(list(tmp_path.rglob("*")))
    assert not data.exists()


@pytest.mark.parametrize("flags, says", [
    (["--grace", "-5"], "grace: must be at least 0, got -5"),
    (["--max-candidates", "0"], "max_candidates: must be at least 1, got 0"),
    (["--checkpoint-interval", "nan"], "checkpoint_interval: must be a number of seconds above 0, got nan"),
    (["--min-reward", "5", "--max-reward", "1"], "min_reward: min_reward and max_reward must be finite"),
    (["--exploration", "bag", "--exploration-parameter", "1e9"], "bag needs a whole number from 1 to 64"),
    (["--max-request-bytes", "99999999999"], "max_request_bytes: must be within 1024..67108864"),
])
def test_serve_refuses_settings_out_of_range_before_creating_anything(tmp_path: Path, flags: list[str], says: str) -> None:
    data = tmp_path / "data"
    assert says in refused(serve(data, *flags))
    assert not data.exists()


def test_export_log_refuses_to_overwrite_the_event_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    logged(data)
    before = (data / "events.db").read_bytes()
    assert refused(recbandit("export-log", "--data-dir", str(data), "--out", str(data / "events.db"))) == (
        f"export-log: --out {data / 'events.db'} would overwrite a file of the data directory; "
        "name the export *.jsonl or *.parquet")
    assert (data / "events.db").read_bytes() == before
    assert refused(recbandit("export-log", "--data-dir", str(data), "--out", str(tmp_path / "no" / "x.jsonl")))


# -- export-log, evaluate, promote -----------------------------------------------------------------


def test_export_log_reads_the_default_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    logged(tmp_path / "recbandit-data", events=2)
    assert main(["export-log", "--out", "events.jsonl"]) == 0
    assert capsys.readouterr().out == "wrote 2 events to events.jsonl\n"
    assert [len(json.loads(line)["slots"]) for line in (tmp_path / "events.jsonl").read_text().splitlines()] == [1, 1]


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["evaluate", "--no-register"], "evaluate: no event log at {data}/events.db"),
        (["evaluate"], "evaluate: no event log at {data}/events.db"),
        (["promote", "--version", "1"], "promote: no event log at {data}/events.db"),
        (["promote", "--version", "1", "--force"],
         "promote: no policy registry at {data}/mlflow.db: nothing is registered yet (run `recbandit evaluate` first)"),
    ],
    ids=["evaluate-no-register", "evaluate", "promote", "promote-force"],
)
def test_evaluate_and_promote_on_a_missing_data_directory_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str], says: str
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "missing"
    assert main([*command, "--data-dir", str(data)]) == 2
    assert capsys.readouterr().err == says.format(data=data) + "\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("force", [True, False], ids=["forced", "compared"])
def test_promote_of_a_version_that_does_not_exist_prints_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "data"
    logged(data)
    tracking_client(default_tracking_uri(data)).create_registered_model(MODEL_NAME)
    result = recbandit("promote", "--version", "99", "--data-dir", str(data), *(["--force"] if force else []))
    assert refused(result) == f"promote: version 99 of {MODEL_NAME} does not exist"


def test_rebuild_model_refuses_a_data_directory_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    engine = Engine(EngineConfig(data_dir=data))
    try:
        assert main(["rebuild-model", "--data-dir", str(data)]) == 2
        assert capsys.readouterr().err == (
            f"rebuild-model: data directory {data} is in use by pid {os.getpid()} (another recbandit server?)\n"
        )
    finally:
        engine.close()


# -- the command line itself -----------------------------------------------------------------------


def test_version_and_every_option_of_every_command_says_its_default_choices_and_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    import click

    from server.cli import cli

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"recbandit {version('recbandit')}\n"
    for name, command in cli.commands.items():
        for option in command.params:
            if not isinstance(option, click.Option) or option.name == "help":
                continue
            assert option.help and "env var: RECBANDIT_" in option.help, (name, option.name)
    exploration = next(o for o in cli.commands["serve"].params if o.name == "exploration")
    assert "default: squarecb; one of: epsilon, softmax, squarecb, regcbopt, cover, bag; " \
           "env var: RECBANDIT_EXPLORATION" in str(exploration.help)
    min_decisions = next(o for o in cli.commands["evaluate"].params if o.name == "evaluate__min_decisions")
    assert "default: 100; env var: RECBANDIT_EVALUATE__MIN_DECISIONS" in str(min_decisions.help)
    assert main(["serve", "--help"]) == 0 and "RECBANDIT_AUTH_TOKENS" in capsys.readouterr().out


def test_a_config_file_feeds_every_command_under_the_environment_and_the_flags(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve reads the file's port; RECBANDIT_PORT wins over it; a flag wins over both. export-log
    reads the file's data_dir and its [export_log] table."""
    config = tmp_path / "recbandit.toml"
    config.write_text(f'port = 70000\ndata_dir = "{tmp_path / "data"}"\n[export_log]\nformat = "jsonl"\n')
    assert refused(recbandit("--config", str(config), "serve")) == "serve: port: must be within 0..65535, got 70000"
    with_env = subprocess.run([sys.executable, "-m", "server.cli", "--config", str(config), "serve"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "RECBANDIT_PORT": "70001"})
    assert refused(with_env) == "serve: port: must be within 0..65535, got 70001"
    assert refused(recbandit("--config", str(config), "serve", "--port", "-1")) == (
        "serve: port: must be within 0..65535, got -1")
    assert not (tmp_path / "data").exists()
    logged(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["--config", str(config), "export-log", "--out", "events.out"]) == 0
    assert len((tmp_path / "events.out").read_text().splitlines()) == 3  # JSON Lines by the file, not the suffix
    assert refused(recbandit("--config", str(tmp_path / "none.toml"), "serve")) == (
        f"serve: config: {tmp_path / 'none.toml'} is not a file")


WITHOUT_MLFLOW = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "mlflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NotInstalled())
from server.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("args", [["evaluate"], ["promote", "--version", "1", "--force"], ["demo"],
                                  ["serve", "--port", "0", "--policy-registry", "sqlite:///mlflow.db"]])
def test_a_command_that_needs_the_training_extra_says_so_in_one_line_without_it(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_MLFLOW, *args, "--data-dir", str(tmp_path / "data")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = refused(done)
    assert line.startswith(f"{args[0]}: ") and line.endswith("not installed): install recbandit[training]"), line
    assert "mlflow" in line and not (tmp_path / "data").exists()  # refused before anything starts
    help_text = subprocess.run([sys.executable, "-c", WITHOUT_MLFLOW, args[0], "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert help_text.returncode == 0 and "Usage: recbandit" in help_text.stdout
