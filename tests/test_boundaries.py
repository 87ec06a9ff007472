"""engine/ is the domain: it must import without grpc, protobuf or mlflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

IMPORT_EVERY_ENGINE_MODULE = """
import importlib, pkgutil, sys
for blocked in ("grpc", "google.protobuf", "mlflow"):
    sys.modules[blocked] = None
import engine
names = [importlib.import_module(m.name).__name__ for m in pkgutil.walk_packages(engine.__path__, prefix="engine.")]
assert "engine.core" in names and "engine.eventlog" in names, names
print(len(names))
"""


def test_engine_imports_without_transport_or_tracking() -> None:
    """In a fresh interpreter, so that no module imported here leaks into the other tests."""
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERY_ENGINE_MODULE], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20
