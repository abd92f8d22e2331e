"""Shell layer: the console's files.

The console is a single-page app for operators (playground, gallery, usage, channels, tasks) kept in the
package beside this module (`proxy/console/`) and served by the proxy itself, so it works air-gapped:

    GET /console          index.html
    GET /console/{file}   one of the known files (console.js, console.css); any other name is a 404

The names are a fixed set, never joined to a path from the request, so no request reaches another file.
The app calls the API with the admin key in an `Authorization` header (no cookie), so the pages need no
CSRF defence; the Content-Security-Policy allows nothing but this origin (and images as data:/blob: URLs,
which streamed and uploaded images are).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from aiohttp import web

from proxy.core.errors import NotFound
from proxy.services import SERVICES

FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the package: browsers revalidate rather than run an old script against a new API.
    "Cache-Control": "no-cache",
}


@cache
def console_file(name: str) -> bytes:
    """A known file's bytes, read once from the installed package."""
    return resources.files("proxy").joinpath("console", name).read_bytes()


def policy(public_base_url: str) -> str:
    """The Content-Security-Policy: this origin only, and images also from `server.public_base_url` (hosted
    images' URLs are built on it, and the console shows them)."""
    images = f"'self' data: blob: {public_base_url}" if public_base_url else "'self' data: blob:"
    return (f"default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; connect-src 'self'; "
            "frame-ancestors 'none'")


def _answer(request: web.Request, name: str) -> web.Response:
    csp = policy(request.app[SERVICES].rules.server.public_base_url)
    return web.Response(body=console_file(name), headers={**HEADERS, "Content-Security-Policy": csp,
                                                            "Content-Type": FILES[name]})


async def console_index(request: web.Request) -> web.Response:
    return _answer(request, "index.html")


async def console_asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in FILES:
        raise NotFound("Unknown console file.", code="unknown_url")
    return _answer(request, name)


def add_console_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console", console_index)
    router.add_get("/console/", console_index)
    router.add_get("/console/{file}", console_asset)
