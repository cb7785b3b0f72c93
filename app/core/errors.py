"""Domain errors: what went wrong, in words a client can act on. No HTTP here: app/api/errors.py
maps each class to its status and renders it in the body shape of the route."""

from __future__ import annotations


class ServiceError(Exception):
    """An error a client can act on: `detail` says what went wrong and what to do."""

    param: str | None = None  # the request's field at fault, where one is
    retry_after: int | None = None  # seconds after which the same request may succeed

    def __init__(self, detail: str):
        self.detail = detail
        super().__init__(detail)


class UnknownModel(ServiceError):
    pass


class UnknownSession(ServiceError):
    pass


class StateMismatch(ServiceError):
    """A stored session state that does not fit its model (the model was replaced)."""


class Conflict(ServiceError):
    """A change that does not fit the current state (of the models, say): 409."""


class Gone(ServiceError):
    """What was asked for was served here once and is no more (an unloaded model version and
    its sessions): 410."""


class Forbidden(ServiceError):
    """A valid key without the right to this route (a user's key on the admin API): 403."""


class BadText(ServiceError):
    """A text that cannot be used: an unknown word, empty where a word is needed."""


class BadState(ServiceError):
    """A session state document that does not check (its signature, its model, its layout,
    its values): 422, naming the fault; nothing is created."""


class NotEnabled(ServiceError):
    """A route this server was not set up for (a setting is missing, which it names): 501."""


class TextTooLong(ServiceError):
    pass


class OverLimit(ServiceError):
    """A request that would cost more than a setting allows, naming the field at fault:
    refused before anything is built for it."""

    def __init__(self, detail: str, param: str | None = None):
        super().__init__(detail)
        self.param = param


class InvalidRequest(ServiceError):
    """A request the OpenAI protocol refuses, naming the parameter at fault."""

    def __init__(self, detail: str, param: str | None = None):
        super().__init__(detail)
        self.param = param


class AtCapacity(ServiceError):
    """The server holds as many sessions, or queued steps, as it may."""

    def __init__(self, detail: str, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = retry_after


class NotReady(ServiceError):
    """Not serving (yet, or any more): models loading, shutting down, a store unreachable."""

    def __init__(self, detail: str, retry_after: int = 5):
        super().__init__(detail)
        self.retry_after = retry_after


class EngineFailure(ServiceError):
    """The engine failed on one request (a bug, not the client's fault); others go on."""
