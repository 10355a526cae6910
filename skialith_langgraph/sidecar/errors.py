"""The sidecar's error envelope: every 4xx/5xx body is ``{"error": {"code", "message"}}``.

Codes (docs/sidecar.md): ``bad_request`` 400, ``unauthorized`` 401, ``not_found`` 404,
``conflict`` 409, ``too_large`` 413, ``invalid`` 422, ``unavailable`` 503, ``internal`` 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from ..errors import ConfigError, LogError, ReadModelError, SkialithError, SubjectError
from ..inspect import InspectError

__all__ = ["ApiError", "classify", "error_body", "install_handlers"]

logger = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}
# pydantic error types that mean "not JSON" or "the wrong JSON type": 400, the rest (missing
# field, out of range, unknown field) are schema violations: 422
_BAD_REQUEST_TYPES = ("json_invalid", "json_type", "model_attributes_type", "dict_type", "value_error")


class ApiError(Exception):
    """An error answered as the envelope with ``status`` and ``code``."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code or _CODES.get(status, "error"), "message": message}}


def _response(status: int, message: str, code: str | None = None, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers or None)


def _validation_message(exc: RequestValidationError) -> tuple[int, str]:
    parts = []
    status = 422
    for err in exc.errors()[:5]:
        kind = str(err.get("type", ""))
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if kind in _BAD_REQUEST_TYPES or kind.endswith(("_type", "_parsing")):
            status = 400
        if kind == "json_invalid":
            return 400, f"the body is not valid JSON ({err.get('msg')}); send a JSON object"
        parts.append(f"{loc}: {err.get('msg')}")
    return status, "; ".join(parts) + " (see /openapi.json for the request schema)"


def install_handlers(app: FastAPI) -> None:
    """Answer every error as the envelope, including FastAPI's own (404 route, 405, validation)."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _classified(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        status, message = _validation_message(exc)
        return _response(status, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route; see /openapi.json for the API"
        headers = dict(exc.headers or {})
        return _response(exc.status_code, message, **headers)

    @app.exception_handler(InspectError)
    async def _missing(_: Request, exc: InspectError) -> JSONResponse:
        return _classified(exc)

    @app.exception_handler(SkialithError)
    async def _skialith(_: Request, exc: SkialithError) -> JSONResponse:
        return _classified(exc)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _classified(exc)


def _classified(exc: Exception) -> JSONResponse:
    status, message, code, headers = classify(exc)
    return _response(status, message, code, **headers)


def classify(exc: Exception) -> tuple[int, str, str | None, dict[str, str]]:
    """How an exception a route raised is answered: status, message, code, headers (logged as
    the handlers above log it). The fast path (:mod:`.fastpath`) answers with this too."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message, exc.code, {}
    if isinstance(exc, InspectError):
        return 404, str(exc), None, {}
    if isinstance(exc, SkialithError):
        if isinstance(exc, ConfigError | SubjectError | ValueError):
            return 400, str(exc), None, {}
        if isinstance(exc, LogError | ReadModelError):
            logger.warning("service unavailable: %s", exc)
            return 503, f"the log or the read model is unavailable: {exc}", None, {"Retry-After": "1"}
        logger.exception("unexpected error", exc_info=exc)
        return 500, f"internal error ({type(exc).__name__}); see the sidecar's log", None, {}
    logger.error("unexpected error answering a request", exc_info=exc)
    return 500, f"internal error ({type(exc).__name__}); see the sidecar's log", None, {}
