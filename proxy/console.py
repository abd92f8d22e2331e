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

FILES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The files change with the package: browsers revalidate rather than run an old script against a new API.
    "Cache-Control": "no-cache",
}


@cache
def console_file(name: str) -> bytes:
    """A known file's bytes, read once from the installed package."""
    return resources.files("proxy").joinpath("console", name).read_bytes()


def _answer(name: str) -> web.Response:
    return web.Response(body=console_file(name), headers={**HEADERS, "Content-Type": FILES[name]})


async def console_index(request: web.Request) -> web.Response:
    return _answer("index.html")


async def console_asset(request: web.Request) -> web.Response:
    name = request.match_info["file"]
    if name not in FILES:
        raise NotFound("Unknown console file.", code="unknown_url")
    return _answer(name)


def add_console_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/console", console_index)
    router.add_get("/console/", console_index)
    router.add_get("/console/{file}", console_asset)
