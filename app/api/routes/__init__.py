"""The API's routes, one module a resource, all under API_PREFIX (but health's)."""

from collections.abc import Callable
from typing import Any, TypeVar

API_PREFIX = "/v1"
COMPLETIONS = f"{API_PREFIX}/completions"
OPENAI_PATHS = frozenset({COMPLETIONS})  # these answer errors in OpenAI's shape

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
HOT: set[Callable[..., Any]] = set()  # endpoints that app.api.fastpath serves


def hot(endpoint: Endpoint) -> Endpoint:
    """Mark a route for the fast path, which answers it in one pass ahead of the middleware
    stack (app.api.fastpath: a POST with a JSON body model, or a GET without a body; the
    service, the owner, the Request, optional headers; a body with `stream: true` goes on to
    FastAPI)."""
    HOT.add(endpoint)
    return endpoint
