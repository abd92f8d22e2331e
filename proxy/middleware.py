"""Shell layer: the one middleware every request passes, and what it does, outermost first.

    access  request id, timing; once the answer is sent (`account`), request metrics, one JSON access line and
            an image request's ledger record
    errors  every failure leaves as the OpenAI envelope (unexpected ones are logged, answered 500)
    auth    client keys (and admin keys) guard `/v1/*` (constant-time comparison); `require_admin`, called by
            every `/admin/` handler, guards those routes

The three are steps of one middleware rather than three: each middleware is another coroutine frame that
every request (and each of its thousands held at once) carries, and another wrapper aiohttp calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from proxy.core.errors import AuthenticationFailed, NotFound, PayloadTooLarge, ProxyError
from proxy.core.ledger_record import IMAGE_ROUTES
from proxy.core.rules import same_key
from proxy.image_store import IMAGE_ROUTE
from proxy.ledger import answered, arrived
from proxy.observe import REQUEST_ID_HEADER, RequestRecord, access_fields, begin, current_request_id, log_access, note
from proxy.ops import local_client
from proxy.production import key_name
from proxy.services import CLIENT_KEY, SERVICES, Services

log = logging.getLogger("imagegate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Probes arrive every few seconds from orchestrators: counted in metrics, not written to the log.
QUIET_PATHS = frozenset({"/healthz", "/readyz"})


# -- access ---------------------------------------------------------------------------------------


def _route(request: web.Request) -> str:
    # The route's pattern, not the path: label values must stay few (no ids or image names).
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def front_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Access, errors and auth around the handler (the module's docstring)."""
    record = begin(request.headers.get(REQUEST_ID_HEADER))
    services = request.app.get(SERVICES)
    metrics = services.metrics if services is not None else None
    if metrics is not None:
        metrics.in_flight.inc()
    if services is not None and request.method == "POST" and request.path in IMAGE_ROUTES:
        arrived(request, key_name(services, presented_key(request.headers.get("Authorization", ""))))
    status = 500
    try:
        try:
            authorize(request)
            response = await handler(request)
        except Exception as exc:
            if (error := as_error(exc, request)) is None:
                raise
            response = error_response(error)
        status = response.status
        return response
    except web.HTTPException as exc:  # a redirect, passed on as it is
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away (nginx's code for it)
        raise
    finally:
        # aiohttp sends the answer when this returns; the accounting waits for the loop's next turn, so a
        # request's latency does not include it (the answer's bytes are with the kernel by then).
        asyncio.get_running_loop().call_soon(account, request, services, record, status)


def account(request: web.Request, services: Services | None, record: RequestRecord, status: int) -> None:
    """What every request leaves behind: its metrics, its access line, and (an image request) its ledger record."""
    metrics = services.metrics if services is not None else None
    if metrics is not None:
        metrics.in_flight.dec()
        labels = (_route(request), str(record.fields.get("rule", "")), str(record.fields.get("channel", "")), str(status))
        metrics.requests.labels(*labels).inc()
        if status >= 400:
            metrics.errors.labels(str(record.fields.get("error_type", "")), str(status)).inc()
    if request.path not in QUIET_PATHS or status >= 400:
        log_access(access_fields(record, request.method, _loggable(request), status))
    answered(services, record, status)  # the ledger's record of an image request (proxy.ledger)


def _loggable(request: web.Request) -> str:
    # A hosted image's name is its only credential: the log gets the route, not the name.
    return IMAGE_ROUTE + "{name}" if request.path.startswith(IMAGE_ROUTE) else request.path


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, streams included, carries the request id."""
    request_id = current_request_id()
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


# -- errors ---------------------------------------------------------------------------------------



def error_response(error: ProxyError) -> web.Response:
    note(error_type=error.type, error_code=error.code)
    response = web.json_response(error.envelope(), status=error.status, headers=error.headers())
    if error.status in (408, 413):
        # The rest of the body is not worth waiting for: close rather than drain it for keep-alive.
        response.force_close()
    return response


def _from_http_exception(exc: web.HTTPException) -> ProxyError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("The request body is too large.", code="request_too_large")
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("Unknown request URL.", code="unknown_url")
    return ProxyError(exc.reason, status=exc.status, type="invalid_request_error")


def as_error(exc: Exception, request: web.Request) -> ProxyError | None:
    """The envelope a failure leaves as; None for what must propagate (a redirect, a connection reset).
    An unexpected failure is logged and becomes a plain 500."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, web.HTTPException):
        return _from_http_exception(exc) if exc.status >= 400 else None
    if isinstance(exc, ConnectionResetError):
        return None
    log.exception("unexpected error on %s %s", request.method, request.path)
    return ProxyError("The proxy failed to handle the request.", code="internal_error")


# -- auth -----------------------------------------------------------------------------------------


def presented_key(header: str) -> str | None:
    """The client's key: `Bearer <key>`, or the bare key as seed 001's own curl example sends it."""
    value = header.strip()
    if not value:
        return None
    scheme, _, rest = value.partition(" ")
    if scheme.lower() == "bearer":
        return rest.strip() or None
    return value


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_allowed(key: str | None, allowed: tuple[str, ...]) -> bool:
    if key is None:
        return False
    # Compare against every key, always, so timing does not reveal which prefix matched.
    matches = [same_key(candidate, key) for candidate in allowed]
    return any(matches)


def authorize(request: web.Request) -> None:
    """Client keys guard `/v1/*`; hosted images are not guarded (their unguessable name is the credential)."""
    server = request.app[SERVICES].rules.server
    allowed = server.api_keys
    key = presented_key(request.headers.get("Authorization", ""))
    if key is not None and not _is_text(key):
        # aiohttp decodes header bytes that are not UTF-8 with surrogateescape; such a key cannot match a
        # configured one and would fail every later .encode() (comparison, key id hash) with a 500.
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")
    request[CLIENT_KEY] = key or ""
    # Admin keys are client keys too (the console generates with them); they never close an open proxy.
    if allowed and request.path.startswith("/v1/") and not key_allowed(key, allowed + server.admin_keys):
        raise AuthenticationFailed(
            "Incorrect API key provided." if key else "You didn't provide an API key.", code="invalid_api_key"
        )


LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def local_name(host: str) -> bool:
    """Whether a Host header (or an origin's host part) names this machine: localhost or a loopback address."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    return name.lower() in LOCAL_NAMES


def same_origin(headers: Mapping[str, str], host: str) -> bool:
    """No browser says the request comes from another origin: fetch metadata `same-origin` or `none` (a typed
    URL), and an Origin, when sent, of this very host and port. A page on another local port is another
    origin, though browsers call it the same site."""
    if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1].lower() == host.lower()


def require_admin(request: web.Request) -> None:
    """The one rule for `/admin/` routes: a key from `server.admin_keys` (constant-time comparison); on a proxy
    with no keys at all (neither `api_keys` nor `admin_keys`), clients on the machine itself without one."""
    server = request.app[SERVICES].rules.server
    if not server.api_keys and not server.admin_keys:
        # An open proxy's usage, tasks and channel tests are the operator's: not for the network. Loopback is
        # not enough: a reverse proxy on this machine makes every client look like loopback (its forwarding
        # headers, or the public Host, say otherwise), and a web page (DNS rebinding, a form on another
        # site or on another local port) can reach loopback: the Host must be local and the Origin this one.
        if not (local_client(request) and local_name(request.host) and same_origin(request.headers, request.host)):
            raise AuthenticationFailed("This proxy has no keys: its admin routes answer loopback clients only.",
                                       code="admin_loopback_only", status=403)
        return
    if not key_allowed(presented_key(request.headers.get("Authorization", "")), server.admin_keys):
        raise AuthenticationFailed("This route needs an admin key (server.admin_keys).", code="admin_key_required")
