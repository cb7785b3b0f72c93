"""The OpenAPI document, completed with what every route can answer and this server's limits.

FastAPI documents what each route declares: its own errors, from DESCRIPTIONS, the one table
of what an error status means (`documented`). Some answers come from the layers around the
routes, for every route alike, and are added here from the same table: 400 (a body that is not
JSON text), 413 (a body past MAX_BODY_BYTES), 503 (not ready, or a store unreachable), 401
(with keys); 422 is either one message (a string) or pydantic's list of field errors. And a
few bounds are settings, known at app creation, as is whether the server has API keys: without
any, the document declares neither the bearer scheme nor 401, which such a server never answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.routes import API_PREFIX, OPENAI_PATHS
from app.core.config import Settings
from app.schemas.common import MAX_SEED, ErrorDetail
from app.schemas.openai import OpenAIErrorResponse
from app.serving.tokenization import max_ids

# What an error status means: on our routes, and on OpenAI's where it reads otherwise.
DESCRIPTIONS: dict[int, str | tuple[str, str]] = {
    400: (
        "the body cannot be read as JSON text (not UTF-8)",
        "a request the protocol refuses: an unknown field, a value out of range",
    ),
    401: "no valid API key (when the server has keys): see WWW-Authenticate",
    404: "unknown model or session",
    403: "a valid key without the right to this route (a user's key on the admin API)",
    409: "the session's state does not fit its model, or a change that does not fit the "
    "models' state",
    410: "the model version was unloaded (its sessions ended with it) or is being unloaded",
    413: ("text too long", "prompt too long"),
    422: (
        "bad input: an unknown word, an empty text, an option out of range (a message), "
        "or fields that fail validation (a list)",
        "an unknown word or token id in the prompt",
    ),
    429: (
        "at capacity: too many sessions or queued steps (see Retry-After)",
        "at capacity (see Retry-After)",
    ),
    501: "not set up on this server (the message names the missing setting)",
    503: "not ready, shutting down, the model's engine stopped, or the session store unreachable",
}


def describe(status: int, openai: bool = False) -> str:
    what = DESCRIPTIONS[status]
    return what if isinstance(what, str) else what[openai]


def documented(
    *codes: int, openai: bool = False, model: type[BaseModel] | None = None
) -> dict[int | str, dict[str, Any]]:
    """A route's `responses`: the error statuses it answers itself, described by the table,
    with the body of its shape (or `model`)."""
    body = model or (OpenAIErrorResponse if openai else ErrorDetail)
    return {c: {"model": body, "description": describe(c, openai)} for c in codes}


ERROR = {"$ref": "#/components/schemas/ErrorDetail"}
OPENAI_ERROR = {"$ref": "#/components/schemas/OpenAIErrorResponse"}  # OPENAI_PATHS answer this
FIELD_ERROR = {
    "title": "FieldError",
    "type": "object",
    "required": ["type", "loc", "msg"],
    "properties": {
        "type": {"type": "string", "description": "pydantic's error type", "examples": ["missing"]},
        "loc": {
            "type": "array",
            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
            "description": "where: body, then the field",
            "examples": [["body", "text"]],
        },
        "msg": {"type": "string", "examples": ["Field required"]},
        "input": {"description": "the value refused, quoted by a short prefix at most"},
        "ctx": {"type": "object", "description": "the constraint that failed"},
    },
}
VALIDATION = {
    "title": "ValidationProblem",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "anyOf": [
                {"type": "string", "description": "one problem: an unknown word, an empty text"},
                {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
            ]
        }
    },
}
RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "string"}}
}


def _error(description: str, schema: dict[str, str] = ERROR, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def integral_bounds(node: Any) -> None:
    """Bounds of integer schemas as integers. FastAPI's OpenAPI model holds every bound as a
    float: `1.0` reads fine, but 2**63 - 1 comes out as 2**63, one past the real bound."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in BOUNDS:
                if isinstance(node.get(key), float) and node[key].is_integer():
                    node[key] = MAX_SEED if node[key] == float(MAX_SEED) else int(node[key])
        for value in node.values():
            integral_bounds(value)
    elif isinstance(node, list):
        for value in node:
            integral_bounds(value)


def complete(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    integral_bounds(spec)
    schemas = spec["components"]["schemas"]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["FieldError"], schemas["ValidationProblem"] = FIELD_ERROR, VALIDATION
    schemas.setdefault(
        "ErrorDetail",
        {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
    )
    for name in ("ContinuationRequest", "SessionContinuationRequest"):
        if name in schemas:
            schemas[name]["properties"]["max_words"]["maximum"] = settings.MAX_WORDS
    for name, schema in schemas.items():
        if name.endswith("Request") and "text" in schema["properties"]:
            schema["properties"]["text"]["maxLength"] = settings.MAX_TEXT_CHARS
    if "TokenizeRequest" in schemas:  # vLLM's name for the text
        schemas["TokenizeRequest"]["properties"]["prompt"]["maxLength"] = settings.MAX_TEXT_CHARS
    if "DetokenizeRequest" in schemas:
        schemas["DetokenizeRequest"]["properties"]["tokens"]["maxItems"] = max_ids(settings)
    keyed = settings.API_KEYS is not None or settings.API_KEYS_FILE is not None
    if not keyed:
        spec["components"].pop("securitySchemes", None)
    for path, operations in spec["paths"].items():
        openai = path in OPENAI_PATHS
        error = OPENAI_ERROR if openai else ERROR
        for op in operations.values():
            responses = op["responses"]
            if not keyed:
                op.pop("security", None)
            elif path.startswith(f"{API_PREFIX}/"):
                responses["401"] = _error(describe(401), error)
            # an OpenAI route's 422 is a message: FastAPI's list of field errors is a 400
            if "requestBody" in op or ("422" in responses and not openai):
                problem = error if openai else {"$ref": "#/components/schemas/ValidationProblem"}
                responses["422"] = _error(describe(422, openai), problem)
            if "requestBody" in op:
                responses["400"] = _error(describe(400, openai), error)
                responses["413"] = _error(describe(413, openai), error)
            if path.startswith(f"{API_PREFIX}/"):
                responses["503"] = _error(describe(503), error)
            for status in ("429", "503"):
                if status in responses:
                    responses[status]["headers"] = RETRY_AFTER
    return spec


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(spec, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
