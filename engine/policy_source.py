"""Where a served policy comes from: the interface a server's champion follower asks.

A policy source names one alias of one registered model (``recbandit-policy`` @``champion``), says
which version holds it now (one cheap question) and downloads a version's VW model file with its
bandit settings. :class:`training.registry.RegistryPolicySource` is the MLflow registry's; the
composition root (the ``recbandit`` command) hands it to the server when ``--policy-registry`` is
set, so neither the engine nor the server imports the training code or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from engine.bandit import BanditConfig


class SourcedPolicy(Protocol):
    """A policy version on local disk: its VW model file, to be loaded with ``bandit``'s settings."""

    @property
    def version(self) -> str: ...

    @property
    def model_path(self) -> Path: ...

    @property
    def bandit(self) -> BanditConfig: ...

    @property
    def example_format(self) -> int: ...  # the layout of the lines it learned from (engine.bandit.EXAMPLE_FORMAT)


class PolicySource(Protocol):
    """The newest champion policy: which version it is, then its model file and bandit config."""

    @property
    def model_name(self) -> str: ...

    @property
    def alias(self) -> str: ...

    def champion_version(self) -> str | None:
        """The version that holds :attr:`alias` now, None when none does; nothing is downloaded."""
        ...

    def download(self, version: str, dst_dir: Path) -> SourcedPolicy:
        """Version ``version`` of :attr:`model_name`, its model file downloaded under ``dst_dir``."""
        ...
