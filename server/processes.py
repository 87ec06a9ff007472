"""``recbandit serve --processes N`` and ``recbandit learn``: serving processes beside one learner.

``learn`` runs the store's learner (:mod:`engine.roles`): it waits for the learner lease as a
standby if another has it, then joins rewards, closes windows, learns, and publishes snapshots.

``serve --processes N`` starts, on this machine, N serving processes (``--role serve``) that
bind one port with ``SO_REUSEPORT`` (set here deliberately, and only here: the kernel spreads the
connections over them) and one learner, all on the same store. Each child gets the parent's
settings through the environment (``RECBANDIT_*``), so nothing secret goes on a command line. A
child that dies is started again after a second; SIGTERM or SIGINT stops them all, serving
processes first.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from engine.core import Engine
from engine.errors import StartupRefused
from engine.policy_source import PolicySource
from engine.retraining import EmbeddingsTrainer
from engine.storage import redacted
from server.champion import ChampionFollower
from server.errors import InFlight
from server.metrics import Metrics, reward_label_set
from server.settings import ENV_PREFIX, Settings

log = logging.getLogger("server.app")
RESTART_DELAY = 1.0
READY_TIMEOUT = 60.0
REFUSED = 2  # the exit code of a command that refused to start
REFUSAL_WINDOW = 30.0  # seconds after its start in which a child's exit code 2 is a refusal
PR_SET_PDEATHSIG = 1


def learn(settings: Settings, policy_source: PolicySource | None = None,
          embeddings_trainer: EmbeddingsTrainer | None = None) -> None:
    """Run the store's learner until SIGTERM or SIGINT, then checkpoint (publish) and return; with
    ``policy_source``, serve (and publish) its champion as it changes; with ``embeddings_trainer``,
    re-train and publish the embeddings on the ``--embeddings-retrain-interval`` schedule."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config = dataclasses.replace(settings.engine_config(), role="learn", checkpoint_interval=SNAPSHOT_INTERVAL)
    log.info("learner of %s starting (data %s)", redacted(config.store) if config.store else Path(settings.data_dir) / "events.db",
             settings.data_dir)
    engine = Engine(config, cancel_wait=stop, embeddings_trainer=embeddings_trainer)
    engine.checkpoint()  # serving processes start from the learner's model, not one of their own
    endpoint = None
    if settings.metrics_port:  # what it learns: outcomes, learned reward, lag, model age, pruning
        metrics = Metrics(engine, InFlight(), reward_label_set(settings.reward_labels))
        engine.observe(metrics)
        endpoint = metrics.serve(settings.metrics_host, settings.metrics_port)
    champion = None
    if policy_source is not None:
        champion = ChampionFollower(engine, policy_source, settings.policy_poll_interval,
                                    Path(settings.data_dir) / "policies")
        champion.start()
    info = engine.model_info()
    log.info("learning (model %s, %d examples learned; a snapshot every %.1f s)", info.model_version,
             info.examples_learned, SNAPSHOT_INTERVAL)
    while not stop.wait(0.2):
        pass
    log.info("stopping: learning what is final, then publishing the model")
    if champion is not None:
        champion.close()
    if endpoint is not None:
        endpoint.shutdown()
        endpoint.server_close()
    engine.close()
    log.info("stopped; model published")


SNAPSHOT_INTERVAL = 0.5
"""Seconds between the learner's snapshots (when the model changed): with serving processes
polling every ``--model-poll-interval``, a learned reward reaches them within about both."""


def serve_processes(settings: Settings) -> None:
    """Run ``settings.processes`` serving processes and one learner until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    port = settings.port or _free_port(settings.host)
    base = {**os.environ, **_environment(settings)}
    children = [_Child("learner", ["learn"], base)]
    for i in range(settings.processes):
        overrides = {"ROLE": "serve", "PORT": str(port), "REUSE_PORT": "true", "PROCESSES": "1", "POLICY_REGISTRY": "",
                     "METRICS_PORT": str(settings.metrics_port + 1 + i) if settings.metrics_port else "0"}
        children.append(_Child(f"serving process {i + 1}", ["serve"], {**base, **_prefixed(overrides)}))
    try:
        for child in children:
            child.start()
        _wait_until_listening(settings.host, port, stop, children)
        log.info("listening on %s:%d (%d serving processes and a learner; data %s)", settings.host, port,
                 settings.processes, settings.data_dir, extra={"port": port})
        while not stop.wait(0.2):
            for child in children:
                child.restart_if_dead()
    finally:
        _stop_all(children, settings.grace)


def _stop_all(children: list[_Child], grace: float) -> None:
    """Stop the serving processes, then the learner (it learns what is final and publishes)."""
    log.info("stopping: serving processes first, then the learner")
    for child in children[1:]:
        child.terminate()
    for child in children[1:]:
        child.wait(grace + 10.0)
    children[0].terminate()
    children[0].wait(grace + 30.0)
    log.info("stopped")


class _Child:
    """One child process: ``recbandit <command>`` with an environment, started again if it dies."""

    def __init__(self, name: str, command: list[str], environment: dict[str, str]) -> None:
        self.name = name
        self.argv = [sys.executable, "-m", "server.cli", *command]
        self.environment = environment
        self.process: subprocess.Popen[bytes] | None = None
        self._died_at: float | None = None
        self._started = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, env=self.environment, preexec_fn=_die_with_parent)
        self._started = time.monotonic()
        log.info("%s started (pid %d)", self.name, self.process.pid)

    def restart_if_dead(self) -> None:
        """Start the child again a second after it died; one refused at start (exit code 2) is not
        started again: its refusal stands for the others too (a port in use, a bad setting)."""
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        now = time.monotonic()
        if code == REFUSED and now - self._started < REFUSAL_WINDOW:
            raise StartupRefused(f"{self.name} refused to start (its line above says why); stopping the others")
        if self._died_at is None:
            log.error("%s (pid %d) exited with %s; starting it again", self.name, self.process.pid, code)
            self._died_at = now
        if now - self._died_at >= RESTART_DELAY:
            self._died_at = None
            self.start()

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()


def _environment(settings: Settings) -> dict[str, str]:
    """The top-level settings as ``RECBANDIT_*`` variables, which a child's :meth:`Settings.load` reads."""
    values = {}
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, bool):
            values[name.upper()] = "true" if value else "false"
        elif isinstance(value, str | int | float | Path):
            values[name.upper()] = str(value)
    return _prefixed(values)


def _prefixed(values: dict[str, str]) -> dict[str, str]:
    return {f"{ENV_PREFIX}{name}": value for name, value in values.items()}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _wait_until_listening(host: str, port: int, stop: threading.Event, children: list[_Child]) -> None:
    """Until the port answers and no child has been refused (another listener may hold the port)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not stop.is_set():
        for child in children:
            child.restart_if_dead()
        try:
            with socket.create_connection((host, port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    settle = time.monotonic() + 1.0  # a child refused at bind exits within this
    while time.monotonic() < settle and not stop.is_set():
        for child in children:
            child.restart_if_dead()
        time.sleep(0.1)


def _die_with_parent() -> None:
    """In the child, before it runs: SIGTERM it when the supervisor dies, even by kill -9 (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
