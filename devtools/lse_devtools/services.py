"""The real monitoring servers of the end-to-end tests, each on a free loopback port, and their
HTTP APIs: Debian's prometheus, prometheus-alertmanager and victoria-metrics, plus a webhook
receiver that keeps what Alertmanager delivers."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from lse_devtools.bundle import tool

LOOPBACK = "127.0.0.1"


def exposition_server(exposition: Callable[[], bytes]) -> http.server.ThreadingHTTPServer:
    """A stand-in exporter on a free loopback port (its server_port), answering every GET with
    exposition() in the text format, for a real Prometheus to scrape; shutdown() stops it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def get_json(url: str, **params) -> dict:
    if params:
        url += "?" + urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait(what: str, check, timeout: float = 60.0, interval: float = 0.25):
    """Poll until check() is truthy (connection errors count as not yet) and return it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")


class Server:
    """A monitoring server run as a real process on a loopback port until stop()."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, ready_path: str,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.port, self.log = name, port, log
        with log.open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait(f"{name} ready", lambda: self._ready(ready_path))
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _ready(self, path: str) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.name} exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
        with urllib.request.urlopen(self.url + path, timeout=2) as response:
            return response.status == 200

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    # PromQL over the Prometheus HTTP API (VictoriaMetrics answers the same paths).

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        answer = get_json(f"{self.url}/api/v1/query", **params)
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        answer = get_json(f"{self.url}/api/v1/query_range", query=expr, start=f"{start:.3f}",
                          end=f"{end:.3f}", step=f"{step:g}")
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    def label_values(self, label: str, selector: str, start: float, end: float) -> list[str]:
        """What Grafana's label_values(selector, label) variable query asks for."""
        answer = get_json(f"{self.url}/api/v1/label/{label}/values",
                          **{"match[]": selector, "start": f"{start:.0f}", "end": f"{end:.0f}"})
        assert answer["status"] == "success", (selector, answer)
        return answer["data"]


def prometheus(config: Path, data: Path, port: int, hypervisor: str = "") -> Server:
    """Debian's Prometheus 2.x: it expands ${HYPERVISOR} in external_labels only with the
    expand-external-labels feature (3.x always does, as the shipped config explains)."""
    return Server(
        "prometheus",
        [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address={LOOPBACK}:{port}", "--enable-feature=expand-external-labels"],
        port, data.parent / f"prometheus-{port}.log", "/-/ready",
        env={"HYPERVISOR": hypervisor, "PATH": "/usr/bin:/bin"},
    )


def alertmanager(config: Path, data: Path, port: int) -> Server:
    """Alertmanager without its cluster port (it binds every address by default)."""
    return Server(
        "alertmanager",
        [tool("prometheus-alertmanager"), f"--config.file={config}", f"--storage.path={data}",
         f"--web.listen-address={LOOPBACK}:{port}", "--cluster.listen-address="],
        port, data.parent / f"alertmanager-{port}.log", "/-/ready",
    )


def victoria_metrics(data: Path, port: int) -> Server:
    """Answers at once what it received: no latency offset, no result cache."""
    return Server(
        "victoria-metrics",
        [tool("victoria-metrics"), f"-httpListenAddr={LOOPBACK}:{port}",
         f"-storageDataPath={data}", "-retentionPeriod=1", "-search.latencyOffset=0s",
         "-search.disableCache", "-loggerLevel=ERROR"],
        port, data.parent / f"victoria-metrics-{port}.log", "/health",
    )


class Webhook:
    """An HTTP receiver for Alertmanager's webhook notifications, kept with their path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        received, lock = self.received, self._lock

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, alertname: str, **labels: str) -> list[tuple[str, dict]]:
        """(path, alert) of each firing alert delivered with this name and these labels."""
        with self._lock:
            return [(path, alert) for path, body in self.received for alert in body["alerts"]
                    if alert["status"] == "firing" and alert["labels"]["alertname"] == alertname
                    and all(alert["labels"].get(k) == v for k, v in labels.items())]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

