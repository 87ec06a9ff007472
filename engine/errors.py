"""Domain errors. They carry meaning; the server alone maps them to status codes."""

from __future__ import annotations

import os

SHOWN_CHARACTERS = 40
"""At most this many characters of a client's value are echoed in an error message."""


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut to :data:`SHOWN_CHARACTERS` with its full length.

    Names and ids come from clients: echoed whole, a 100 kB name would swell the error past the
    metadata limit. ``shown("x" * 100)`` is the first 40 characters, quoted, then ``… (100 characters)``.
    """
    if len(value) <= SHOWN_CHARACTERS:
        return repr(value)
    return f"{value[:SHOWN_CHARACTERS]!r}… ({len(value)} characters)"


class RecbanditError(Exception):
    """Base of every error the engine raises on purpose; its message is safe to show a client."""


class InvalidRequest(RecbanditError):
    """A request field breaks a documented rule."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConfigurationError(RecbanditError):
    """A setting breaks its rule: a problem of how recbandit was started, never of a request.

    No status code maps it: it is refused before serving (the command prints it in one line), and
    should one reach a client it is ``INTERNAL``, not the client's fault.
    """

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


class UnknownEvent(RecbanditError):
    """No decision with this event id is in the log."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event_id: no decision with event_id {shown(event_id)}")
        self.event_id = event_id


class UnknownCandidate(RecbanditError):
    """The event is logged, but the item was not one of its candidates."""

    def __init__(self, event_id: str, item_id: str) -> None:
        super().__init__(f"item_id: {shown(item_id)} was not a candidate of event {shown(event_id)}")
        self.event_id = event_id
        self.item_id = item_id


class PreconditionFailed(RecbanditError):
    """The request is well formed but the event's state does not allow it (window closed, …)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class EventConflict(RecbanditError):
    """A client-supplied event id is already taken by a different request."""

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(f"event_id: {shown(event_id)} {reason}")
        self.event_id = event_id


class ModelNotReady(RecbanditError):
    """The engine is starting or stopping and cannot decide now."""


class Busy(RecbanditError):
    """A costly call of which one runs at a time is running: refused at once, not queued."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} is already running; retry when it is done")


class StorageUnavailable(RecbanditError):
    """The event log cannot be written now (disk full, I/O error, damaged file); nothing was acknowledged."""

    def __init__(self) -> None:
        super().__init__("the event log cannot be written now; retry later (the server log has the cause)")


class LeaseLost(RecbanditError):
    """Another learner took the store's learner lease since this one took it: this one must stop writing."""


class Contended(StorageUnavailable):
    """A write the database kept undoing for conflicts with other processes' (deadlocks), past its
    retries: the store works, this write did not get through; retry it."""

    def __init__(self) -> None:
        RecbanditError.__init__(self, "the event log is busy with conflicting writes; retry")


class StartupRefused(RecbanditError):
    """The engine will not start on this data directory as it is; the message says why and the way out."""


class CorruptCheckpoint(StartupRefused):
    """The checkpoint's manifest or model file is unreadable or not what it recorded."""

    def __init__(self, data_dir: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{problem}; {rebuild_advice(data_dir)}")


def rebuild_advice(data_dir: str | os.PathLike[str]) -> str:
    """The way out of a checkpoint that cannot be trusted: the log is the source of truth."""
    return f"run `recbandit rebuild-model --data-dir {data_dir}` to rebuild the model from the event log"
