"""``recbandit serve`` as an operator runs it: a real process, its port read from its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"listening on [^ ]+:(\d+)")


def spawn_serve(data_dir: Path, *flags: str, log_file: Path | None = None,
                env: dict[str, str] | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``recbandit serve --port 0 --data-dir DATA_DIR FLAGS``; return the process and its port.

    The server's log (stderr) goes to ``log_file`` (default ``DATA_DIR.log``), never to a pipe that
    nobody drains; the port is read from its "listening on HOST:PORT" line.
    """
    log_file = log_file or data_dir.with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--port", "0", "--data-dir", str(data_dir), *flags],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sink,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = LISTENING.search(log_file.read_text(errors="replace"))
        if match:
            return process, int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise AssertionError(f"recbandit serve did not start: {log_file.read_text(errors='replace')[-2000:]}")
