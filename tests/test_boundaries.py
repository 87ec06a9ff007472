"""Dependencies run one way, ``server → engine ← training``, and ``server/cli.py`` alone wires the two.

Read from the source (every import statement, at module level or inside a function, and
``importlib.import_module("…")``), so that a lazy import cannot hide a crossing. A serving-only
install has no training extra: engine and server import none of it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_EXTRA = ("mlflow", "matplotlib", "lightfm", "tqdm")
FORBIDDEN = {
    "engine": ("server", "training", "grpc", "google.protobuf", *TRAINING_EXTRA),
    "server": ("training", *TRAINING_EXTRA),
    "training": ("server",),
}
"""What each package must not import, by module name (a name and everything under it)."""
COMPOSITION_ROOT = {"server/cli.py": ("training",)}
"""The one file allowed to cross, and the crossing it may make: the CLI wires server and training."""


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``, wherever it stands; relative ones resolved."""
    package = path.relative_to(ROOT).parent.parts
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package[: len(package) - node.level + 1] if node.level else ()
            base = ".".join([*parent, *([node.module] if node.module else [])])
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and ast.unparse(node.func) in ("importlib.import_module",
                                                                                     "import_module", "__import__")):
            yield node.lineno, node.args[0].value


def within(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def test_server_engine_training_depend_one_way_and_only_the_cli_wires_server_and_training() -> None:
    violations, crossings = [], []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            for line, module in imports(path):
                rule = next((name for name in forbidden if within(module, name)), None)
                if rule is None:
                    continue
                if rule in COMPOSITION_ROOT.get(where, ()):
                    crossings.append(module)
                else:
                    violations.append(f"{where}:{line} imports {module}: {package}/ must not import {rule}")
    assert not violations, "the dependency rule server → engine ← training is broken:\n" + "\n".join(violations)
    assert any(within(m, "training.demo") for m in crossings), crossings  # its imports inside functions are seen


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
    """What third-party packages import at run time, too: in a fresh interpreter, so that no module
    imported here leaks into the other tests."""
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERY_ENGINE_MODULE], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20
