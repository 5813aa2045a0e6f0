"""The routes: which answer each path gets. /metrics (text from exposition.MetricsRenderer),
the landing page (landing_page.py), the runbook (runbook.py), health, /api/operations and
each operation's trace and verdict (web/api.py), the page of one operation
(operation_page.py) and the static files it needs. Served by web/server.py behind the layers of web/layers.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import parse_qs

from prometheus_client.exposition import gzip_accepted

from ..store.oplog import OperationsLog
from ..store.view import StateStore
from . import landing_page, operation_page, runbook
from .api import BadRequest, OperationsApi, Traces, judged
from .layers import StartResponse, send
from .page_cache import PageCache

TRACE_PATH = re.compile(r"/api/operations/([0-9a-f]{16})/(trace|verdict)")
OPERATION_PATH = re.compile(r"/operations/([0-9a-f]{16})")
STATIC_PATH = re.compile(r"/static/([A-Za-z0-9._-]+)")
HTML = "text/html; charset=utf-8"
JSON = "application/json"
OPERATION_PAGES = 32  # operation pages kept rendered...
OPERATION_PAGES_BYTES = 64 * 2**20  # ...in this many bytes (a trace makes a page large)
LANDING_FILTERS = 16  # `?domain=` filters whose part of the landing page is kept rendered

RenderMetrics = Callable[[str, Sequence[str], bool], tuple[bytes, str]]


class App:
    def __init__(self, store: StateStore, oplog: OperationsLog,
                 render_metrics: RenderMetrics, telemetry_path: str,
                 traces: Traces | None = None) -> None:
        self.store = store
        self.oplog = oplog
        self.render_metrics = render_metrics
        self.telemetry_path = telemetry_path
        self.api = OperationsApi(store, oplog, traces)
        self.operation_pages: PageCache[bytes] = PageCache(OPERATION_PAGES,
                                                           OPERATION_PAGES_BYTES, len)
        self.landing_logs: PageCache[landing_page.Logged] = PageCache(LANDING_FILTERS)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if path == self.telemetry_path:
            return self._metrics(environ, params, start_response)
        if path == "/-/healthy":
            return send(start_response, "200 OK", "text/plain", b"OK\n")
        if path == "/api/operations":
            try:
                return send(start_response, "200 OK", JSON, self.api.operations_json(params))
            except BadRequest as exc:
                body = json.dumps({"error": str(exc)}).encode()
                return send(start_response, "400 Bad Request", JSON, body)
        if path == "/":
            return send(start_response, "200 OK", HTML, self.landing(params).encode())
        if path == "/runbook":
            return send(start_response, "200 OK", HTML, runbook.render())
        if (match := OPERATION_PATH.fullmatch(path)) and (page := self.operation(match[1])):
            return send(start_response, "200 OK", HTML, page)
        if ((match := STATIC_PATH.fullmatch(path))
                and (found := operation_page.static_file(match[1]))):
            return send(start_response, "200 OK", found[1], found[0],
                        [operation_page.STATIC_CACHE])
        if match := TRACE_PATH.fullmatch(path):
            body = (self.api.trace_json(match[1]) if match[2] == "trace"
                    else self.api.verdict_json(match[1]))
            if body is not None:
                return send(start_response, "200 OK", JSON, body)
        return send(start_response, "404 Not Found", "text/plain", b"not found\n")

    def _metrics(self, environ: dict, params: dict[str, list[str]],
                 start_response: StartResponse) -> Iterable[bytes]:
        """Content negotiation, `name[]` filters and gzip as prometheus_client's own
        exposition does them."""
        compressed = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", ""))
        body, ctype = self.render_metrics(environ.get("HTTP_ACCEPT", ""),
                                          params.get("name[]", []), compressed)
        headers = [("Content-Type", ctype)]
        if compressed:
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    def operation(self, operation_id: str) -> bytes | None:
        """Its page, rendered once per version of its entry and of its trace (a verdict or a
        trace coming or going renders it again); None when it is not in the log."""
        found = self.api.found(operation_id)
        if found is None:
            return None
        return self.operation_pages.get(
            operation_id, found, lambda: operation_page.render(*judged(*found)).encode())

    def landing(self, params: dict[str, list[str]] | None = None) -> str:
        """The landing page: what it shows of the log made once per version of the log and
        `?domain=` filter, from the log's indexes (every operation of the domain is found, not
        only the newest of the log); in flight as it stands now."""
        domain = landing_page.domain_param(params or {})
        logged = self.landing_logs.get(domain, self.oplog.version, lambda: self._logged(domain))
        return landing_page.render(self.store.view, self.api.in_flight(), logged,
                                   self.telemetry_path, domain)

    def _logged(self, domain: str) -> landing_page.Logged:
        newest, total = self.oplog.page(0, landing_page.ROWS)
        shown, matching = self.oplog.of_domain(domain, landing_page.ROWS) if domain \
            else (newest, total)
        return landing_page.Logged.of(shown, matching, total, self.oplog.domains(), newest,
                                      domain)
