"""The WSGI layers every request passes before its route (http_server.serve stacks them):
GET and HEAD only, basic auth and the configured headers, and no request that can end in a
traceback. Every answer of the server is built by send().
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

from .webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)

SERVER = ("Server", "libvirt-snapshot-exporter")  # no Python version for scanners
METHODS = ("GET", "HEAD")
PLAIN = "text/plain; charset=utf-8"

StartResponse = Callable[..., Any]


def send(start_response: StartResponse, status: str, ctype: str, body: bytes | list[bytes],
         headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    """One whole answer: every response of this server is built here. A body in chunks is
    sent chunk by chunk, so a large cached chunk goes out as it is kept, never copied."""
    chunks = [body] if isinstance(body, bytes) else body
    length = sum(map(len, chunks))
    start_response(status, [("Content-Type", ctype), *headers, ("Content-Length", str(length))])
    return chunks


class Methods:
    """GET and HEAD only, 405 with the methods allowed otherwise; HEAD gets the headers of
    GET without the body."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in METHODS:
            return send(start_response, "405 Method Not Allowed", PLAIN, b"Method Not Allowed\n",
                        [("Allow", ", ".join(METHODS))])
        body = self.app(environ, start_response)
        return [] if method == "HEAD" else body


class Safe:
    """The outermost layer: every answer names the server without its Python version, and an
    exception anywhere below answers 500 with one log line, never a traceback."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status, [*headers, SERVER], exc_info)

        try:
            return self.app(environ, respond)
        except Exception as exc:  # noqa: BLE001 - a bug must not become a traceback per request
            log.error("%s %r: %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                      type(exc).__name__, exc)
            body = send(lambda status, headers: respond(status, headers, sys.exc_info()),
                        "500 Internal Server Error", PLAIN, b"Internal Server Error\n")
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else body


class Guard:
    """Basic auth and the configured response headers in front of every path, as the
    exporter-toolkit does (health and the landing page included)."""

    def __init__(self, app: Callable, web: WebConfig) -> None:
        self.app = app
        self.auth = BasicAuth(web.users) if web.users else None
        self.headers = list(web.headers.items())

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status, headers + self.headers, exc_info)

        if self.auth is None or self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return self.app(environ, respond)
        return send(respond, "401 Unauthorized", PLAIN, b"Unauthorized\n",
                    [("X-Content-Type-Options", "nosniff"), ("WWW-Authenticate", "Basic")])
