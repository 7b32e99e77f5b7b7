"""The OpenAPI document, made to say what the server does: errors are OpenAI error bodies
with status 400 (never FastAPI's 422), and the completion routes may answer with an event
stream."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from gateway.responses import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request or media"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Overloaded; retry after Retry-After seconds"},
    503: {"model": ErrorResponse, "description": "A model service is unavailable"},
    504: {"model": ErrorResponse, "description": "The request's deadline passed"},
}
STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; with stream=true, server-sent events of chunks, "
        "then `data: [DONE]`",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string", "description": "`data: <chunk JSON>` lines"}
            }
        },
    }
}
UNUSED_SCHEMAS = ("HTTPValidationError", "ValidationError")


def truthful_openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in UNUSED_SCHEMAS:
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
