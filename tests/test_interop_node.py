"""A Node.js storefront (@grpc/grpc-js and @grpc/proto-loader, from the .proto alone) against a
real server: it learns a planted preference, receives the logged propensities and reads the
google.rpc.BadRequest of a refused call. Its npm packages are installed from its package-lock.json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import google.rpc

ROOT = Path(__file__).resolve().parents[1]
STOREFRONT = ROOT / "tests" / "interop" / "node"
EVENTS = 400


def installed(folder: Path) -> Path:
    """The storefront copied to ``folder`` with its pinned packages (``npm ci``)."""
    for name in ("package.json", "package-lock.json", "storefront.js"):
        shutil.copy(STOREFRONT / name, folder / name)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"], cwd=folder, check=True,
                   capture_output=True, timeout=300)
    return folder


def test_a_node_storefront_learns_a_planted_preference_and_reads_the_details(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = installed(tmp_path)
    running, _ = start_server()
    google_protos = Path(next(iter(google.rpc.__path__))).parents[1]  # where google/rpc/*.proto lie
    done = subprocess.run(
        ["node", "storefront.js", f"127.0.0.1:{running.port}", str(ROOT / "protos"), str(google_protos), str(EVENTS)],
        cwd=folder, capture_output=True, text=True, timeout=300, env={**os.environ, "NODE_OPTIONS": ""},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # vip users buy shoes, the others bags: choosing at random earns 0.5
    assert result["last_rate"] >= 0.85 and result["last_rate"] > result["first_rate"] - 0.05, result
    assert len(result["decisions"]) == EVENTS
    for event_id, item_id, probability, slot in result["decisions"]:
        logged = running.engine.log.get_decision(event_id).slots[0]
        assert (logged.item_id, logged.probability, slot) == (item_id, probability, 0)  # the propensity, exactly
    assert result["violations"] == [["num_results", "must be at most 50, got 99"]]
