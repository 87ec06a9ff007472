"""Follow the registry's champion: poll it, and swap the served policy when its version changes.

The registry is a :class:`engine.policy_source.PolicySource` handed in by whoever builds the server
(the ``recbandit`` command passes MLflow's, :class:`training.registry.RegistryPolicySource`: the
alias ``champion`` of the registered model ``recbandit-policy``). A poll first asks which version
holds the alias (one cheap query); only when it differs from the version served does it download
that version into ``<data_dir>/policies/v<version>`` and hand the engine the path of the VW file
(:meth:`engine.core.Engine.swap_policy`), so neither the engine nor the server imports MLflow.

:meth:`ChampionFollower.reload` is the ``ReloadPolicy`` RPC and every poll; one lock makes them
take turns. A failed poll is logged and retried at the next interval; the served policy stays.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from engine.bandit import EXAMPLE_FORMAT
from engine.core import Engine, RegisteredPolicy
from engine.errors import PreconditionFailed
from engine.policy_source import PolicySource

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0
"""Seconds the server waits at shutdown for a champion poll in progress."""


class ChampionFollower:
    """Polls ``source``'s champion every ``poll_interval`` seconds (0 or less: only on demand)."""

    def __init__(self, engine: Engine, source: PolicySource, poll_interval: float, download_dir: Path) -> None:
        self.engine = engine
        self.source = source
        self.poll_interval = poll_interval
        self.download_dir = download_dir
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reload(self) -> tuple[bool, RegisteredPolicy]:
        """Serve the champion now if its version is not the one served; return (changed, champion).

        Raises :class:`PreconditionFailed` when no version holds the alias.
        """
        name, alias = self.source.model_name, self.source.alias
        with self._lock:
            version = self.source.champion_version()
            if version is None:
                raise PreconditionFailed("policy_registry", f"no version of {name} holds the alias @{alias}")
            served = self.engine.registered_policy
            if served is not None and (served.model_name, served.version) == (name, version):
                return False, served
            policy = self.source.download(version, self.download_dir)
            if policy.example_format != EXAMPLE_FORMAT:
                raise PreconditionFailed(
                    "policy_registry", f"version {version} of {name} learned from examples of format "
                    f"{policy.example_format}, and this recbandit builds format {EXAMPLE_FORMAT}: register a policy "
                    "evaluated by this recbandit (recbandit evaluate)")
            registered = RegisteredPolicy(name, policy.version, alias)
            self.engine.swap_policy(policy.bandit, str(policy.model_path), registered)
            return True, registered

    def start(self) -> None:
        """Poll at once (in the background), then every ``poll_interval`` seconds."""
        self._thread = threading.Thread(target=self._poll, name="champion-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                self.reload()
            except PreconditionFailed as error:
                log.debug("no champion to follow yet: %s", error)
            except Exception:  # the registry may be down: keep the served policy, try again later
                log.exception("polling the policy registry failed; the served policy stays")
            if self.poll_interval <= 0:
                return
            wait = self.poll_interval

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop polling; wait at most ``timeout`` seconds for a poll in progress (an unreachable
        registry's client may retry for minutes: the daemon thread is left to end with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the champion poll did not end within %.0f s; leaving it", timeout)
