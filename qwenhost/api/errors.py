"""OpenAI-shaped error responses, and the handlers that make every bad request a 4xx, never a 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from qwenhost.api.hot_path import is_json_body
from qwenhost.api.metering import AdminRequired
from qwenhost.gateway.keys import AuthError
from qwenhost.gateway.limits import LimitExceeded
from qwenhost.router.local import RequestError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable"}


def error_body(message: str, err_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   err_type: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    t = err_type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse(error_body(message, t, param, code), status_code=status, headers=headers)


def _loc(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request body", None
    e = errs[0]
    if e.get("type") == "json_invalid":
        return "the request body is not valid JSON (or not UTF-8): " + str(e.get("ctx", {}).get("error", "")), None
    if e.get("type") == "model_attributes_type" and not _loc(tuple(e.get("loc", ()))):
        return "the request body must be a JSON object", None
    # pydantic reports a union failure once per member; the first member's message is the clearest.
    where = _loc(tuple(e.get("loc", ())))
    msg = e.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    return (f"{where}: {msg}" if where else msg) + more, where or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        if param is None and not is_json_body(request.scope):
            # FastAPI did not read it as JSON at all (curl -d sends a form unless told otherwise)
            msg = (f"send the body as JSON with the header 'Content-Type: application/json' (this request's "
                   f"content type is {request.headers.get('content-type', '')!r})")
        return error_response(400, msg, param=param)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code,
                              err_type=exc.err_type, headers=headers)

    @app.exception_handler(AuthError)
    async def _auth(_: Request, exc: AuthError) -> JSONResponse:
        return error_response(401, exc.message, code=exc.code, err_type="invalid_request_error",
                              headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(AdminRequired)
    async def _admin(_: Request, exc: AdminRequired) -> JSONResponse:
        return error_response(403, exc.message, code="admin_key_required", err_type="permission_error")

    @app.exception_handler(LimitExceeded)
    async def _limit(_: Request, exc: LimitExceeded) -> JSONResponse:
        # OpenAI's shapes: quota → type/code insufficient_quota; rate → type "requests"/"tokens", code
        # rate_limit_exceeded, with Retry-After.
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else {}
        if exc.code == "insufficient_quota":  # a spent budget does not come back in seconds: tell clients (the
            headers["x-should-retry"] = "false"  # openai SDKs read this) not to retry
        err_type = "insufficient_quota" if exc.code == "insufficient_quota" else (
            "tokens" if "tokens per minute" in exc.message else "requests")
        return error_response(429, exc.message, code=exc.code, err_type=err_type, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 413:  # a body sent in chunks, with no Content-Length to refuse it by up front
            return error_response(413, f"the request body is over the limit of "
                                       f"{request.app.state.qwenhost.max_body_bytes} bytes")
        if isinstance(exc.__cause__, RecursionError):  # FastAPI's "There was an error parsing the body"
            return error_response(400, "the request body's JSON is nested too deeply to parse")
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", err_type="server_error")
