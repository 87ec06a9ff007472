"""Domain errors. They carry meaning; the server alone maps them to status codes."""

from __future__ import annotations


class RecbanditError(Exception):
    """Base of every error the engine raises on purpose; its message is safe to show a client."""


class InvalidRequest(RecbanditError):
    """A request field breaks a documented rule."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownEvent(RecbanditError):
    """No decision with this event id is in the log."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event_id: no decision with event_id {event_id!r}")
        self.event_id = event_id


class PreconditionFailed(RecbanditError):
    """The request is well formed but the event's state does not allow it (window closed, …)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class EventConflict(RecbanditError):
    """A client-supplied event id is already taken by a different request."""

    def __init__(self, event_id: str, reason: str) -> None:
        super().__init__(f"event_id: {event_id!r} {reason}")
        self.event_id = event_id


class ModelNotReady(RecbanditError):
    """The engine is starting or stopping and cannot decide now."""
