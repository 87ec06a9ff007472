"""How the server logs: text or JSON lines on stderr, and one access line per RPC.

``--log-format json`` writes one JSON object per line (``time``, ``level``, ``logger``,
``message`` and, for access lines, ``method``, ``code``, ``duration_ms`` and ``event_id``) through
python-json-logger; ``text`` (the default) writes ``time LEVEL logger: message``.

The access line of a call says which RPC, its status, how long it took in the servicer and the
event it concerned. It never holds a token or a user id (raw or pseudonymous). ``--no-access-log``
turns it off; calls refused by the token check have one too, Health checks none.
"""

from __future__ import annotations

import logging
from typing import TextIO

from engine.errors import ConfigurationError, shown

ACCESS = logging.getLogger("recbandit.access")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


def configure(level: str | int, log_format: str, *, access_log: bool, stream: TextIO | None = None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr) in ``log_format``; access lines if asked."""
    handler = logging.StreamHandler(stream)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    elif log_format == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ConfigurationError("log_format", f"must be one of {', '.join(FORMATS)}, got {log_format[:20]!r}")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    ACCESS.setLevel(root.level if access_log else logging.CRITICAL + 1)  # access lines are INFO records


def access(method: str, code: str, seconds: float, event_id: str) -> None:
    """One access line: ``Recommend OK 1.23 ms event_id='…'`` (the event id cut short and escaped)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    event = shown(event_id) if event_id else ""
    milliseconds = round(seconds * 1e3, 3)
    ACCESS.info("%s %s %.2f ms%s", method, code, milliseconds, f" event_id={event}" if event else "",
                extra={"method": method, "code": code, "duration_ms": milliseconds, "event_id": event_id[:256]})
