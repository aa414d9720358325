"""The ASGI guard in front of every route of the server: token, CORS, body size, /reload, MemoryError.

MONAI Label builds its Starlette middleware stack (with a wildcard-origin, credentialed CORSMiddleware) before
the app's lifespan runs, so `install()` replaces that CORSMiddleware by `Guard` in `user_middleware` and
rebuilds `middleware_stack`. Order of the checks, each answered at once with {"detail": reason}:

1. an Origin that is neither listed in `cors_origins` nor the server's own: a CORS pre-flight and any write
   (PUT/POST/DELETE, e.g. a cross-site form post) get 403, a read is served without CORS headers (so a browser
   hides the answer from that page);
2. POST /reload: 403 (each reload leaks the app's threads; restart the server instead);
3. with `api_token` set, every request except the open ones (OPEN_GET below) needs
   `Authorization: Bearer TOKEN` or `X-API-Key: TOKEN` (constant-time compare): 401 otherwise;
4. request bodies: a Content-Length over the route's limit gets 413 before a byte is read; a chunked body is
   counted while it streams and answered 413 once past the limit. Upload routes (UPLOAD_PATH) may carry
   max_upload_bytes + max_body_bytes (the file plus its form fields), all others max_body_bytes;
5. a MemoryError from the route: 507, never 500.

`install()` also answers request validation errors (missing/badly typed field, malformed JSON body) with one
readable line: 400 for a body that is not JSON, 422 for the rest; and a JSONDecodeError that a stock endpoint
raises on a form field the client sent with 400.
"""
from __future__ import annotations

import hmac
import json
import logging
import re

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from .security import Settings

logger = logging.getLogger(__name__)

# reads that stay open with a token: app info (never shows the token), the API docs and static viewer files
OPEN_GET = re.compile(r"^/(info/?|docs|openapi\.json|favicon\.ico|static/.*|ohif(/.*)?)?$")
UPLOAD_PATH = re.compile(r"^/(infer|datastore|model|session|batch)(/|$)")
CORS_METHODS = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]
CORS_HEADERS = ["Authorization", "X-API-Key", "Content-Type"]


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, name: str):
        super().__init__(413, f"request body larger than {limit} bytes ({name}); send less or raise the limit "
                              f"with --conf {name} N")


async def _answer(send, status: int, reason: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": reason}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), str(v).encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app, settings: Settings):
        self.settings = settings
        self._token = settings.api_token.encode() if settings.api_token else None
        self._origins = set(settings.cors_origins)
        self.app = app
        if self._origins:
            self.app = CORSMiddleware(app, allow_origins=sorted(self._origins), allow_methods=CORS_METHODS,
                                      allow_headers=CORS_HEADERS, allow_credentials=False)

    def _authorized(self, headers: Headers) -> bool:
        given = headers.get("x-api-key")
        if given is None:
            scheme, _, value = headers.get("authorization", "").partition(" ")
            given = value.strip() if scheme.lower() == "bearer" else None
        # compare_digest takes as long for any wrong token of the same length: no timing oracle
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    def _limit(self, path: str) -> tuple[int, str]:
        s = self.settings
        if UPLOAD_PATH.match(path):
            return s.max_upload_bytes + s.max_body_bytes, "max_upload_bytes"
        return s.max_body_bytes, "max_body_bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        headers = Headers(scope=scope)

        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") not in self._origins:
            own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
            foreign = origin.rstrip("/") != own
            # a browser sends Origin with every cross-origin write; a form POST needs no pre-flight, so without
            # this a web page could label, train or upload through the user's browser (CSRF)
            if foreign and (method not in ("GET", "HEAD", "OPTIONS") or "access-control-request-method" in headers):
                return await _answer(send, 403, f"origin {origin} is not allowed; the server's operator can add "
                                                f"it with --conf cors_origins {origin}")

        if method == "POST" and path.rstrip("/") == "/reload":
            return await _answer(send, 403, "POST /reload is disabled (each reload leaks threads): restart the "
                                            "server to load a changed app")

        if self._token is not None and not (method in ("GET", "HEAD") and OPEN_GET.match(path)) \
                and method != "OPTIONS" and not self._authorized(headers):
            return await _answer(send, 401, "this server requires its API token: send 'Authorization: Bearer "
                                            "TOKEN' or 'X-API-Key: TOKEN'", {"WWW-Authenticate": "Bearer"})

        limit, name = self._limit(path)
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await _answer(send, 400, f"Content-Length {length!r} is not a number of bytes")
            if int(length) > limit:
                return await _answer(send, 413, BodyTooLarge(limit, name).detail, {"Connection": "close"})

        received = 0
        tripped = False
        started = False

        async def counted_receive():
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise BodyTooLarge(limit, name)
            return message

        async def watched_send(message):
            nonlocal started
            if tripped and not started:
                return  # whatever the route made of the refusal: the guard answers 413 itself below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if started:
                raise
        except MemoryError:
            logger.exception(f"{method} {path}: out of memory")
            if started:
                raise
            return await _answer(send, 507, "the server ran out of memory for this request; send a smaller input")
        if tripped and not started:
            await _answer(send, 413, BodyTooLarge(limit, name).detail, {"Connection": "close"})


def _one_line(exc: RequestValidationError) -> tuple[int, str]:
    """(status, reason) of a validation error: 400 for a body that is not JSON, else 422 naming each field."""
    parts, status = [], 422
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        if err.get("type") == "json_invalid":
            status = 400
            why = (err.get("ctx") or {}).get("error", "")
            parts.append(f"the request body is not valid JSON ({why}); send a JSON object, e.g. {{}}".replace(" ()", ""))
        else:
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return status, "; ".join(parts)[:500] or "invalid request"


async def validation_error(request, exc: RequestValidationError):
    status, reason = _one_line(exc)
    return JSONResponse({"detail": reason}, status_code=status)


async def bad_json(request, exc: json.JSONDecodeError):
    """A stock endpoint's json.loads of a form field the client sent (e.g. `params`, `info`): 400, not 500."""
    return JSONResponse({"detail": f"a JSON field of the request is not valid JSON ({exc.msg} at line {exc.lineno} "
                                   f"column {exc.colno}); send a JSON object, e.g. {{}}"}, status_code=400)


async def out_of_memory(request, exc: MemoryError):
    logger.error(f"{request.method} {request.url.path}: out of memory ({exc})")
    return JSONResponse({"detail": "the server ran out of memory for this request; send a smaller input"},
                        status_code=507)


def install(fastapi_app, settings: Settings) -> None:
    """Put Guard where MONAI Label's CORSMiddleware was, add the error handlers and rebuild the stack."""
    if getattr(fastapi_app.state, "sparsesight_guard", False):
        return
    kept = [m for m in fastapi_app.user_middleware if m.cls is not CORSMiddleware]
    fastapi_app.user_middleware = [Middleware(Guard, settings=settings)] + kept
    fastapi_app.exception_handlers[RequestValidationError] = validation_error
    fastapi_app.exception_handlers[MemoryError] = out_of_memory
    fastapi_app.exception_handlers[json.JSONDecodeError] = bad_json
    fastapi_app.middleware_stack = fastapi_app.build_middleware_stack()
    fastapi_app.state.sparsesight_guard = True
    logger.info(f"SparseSight guard installed: token {'required' if settings.api_token else 'off'}, CORS origins "
                f"{list(settings.cors_origins) or 'none'}, body limit {settings.max_body_bytes} B, uploads "
                f"{settings.max_upload_bytes} B")
