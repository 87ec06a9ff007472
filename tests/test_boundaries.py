"""engine/ is the domain: it must import without grpc, protobuf or mlflow."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest

import engine


def test_engine_imports_without_transport_or_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "engine" or name.startswith("engine."):
            monkeypatch.delitem(sys.modules, name)
    for blocked in ("grpc", "google.protobuf", "mlflow"):
        monkeypatch.setitem(sys.modules, blocked, None)
    imported = [
        importlib.import_module(module.name).__name__
        for module in pkgutil.walk_packages(engine.__path__, prefix="engine.")
    ]
    assert "engine.core" in imported and "engine.eventlog" in imported
