"""The exporter run as a real process on a free loopback port, and its /metrics read back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ExporterProcess:
    def __init__(self, *flags: str, state_dir: str | None = None, uri: str | None = None,
                 port: int | None = None, command_prefix: tuple[str, ...] = ()):
        # The libvirtd under test (lse_devtools.testbed reads the same variables).
        uri = uri or os.environ.get("LSE_TEST_URI", "qemu:///system")
        pid_dir = os.environ.get("LSE_PID_DIRECTORY")
        snapshot_dir = os.environ.get("LSE_SNAPSHOT_DIRECTORY")
        self.port = port or free_port()
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="lse-state-")
        self.log_path = Path(tempfile.mkstemp(prefix="lse-exporter-", suffix=".log")[1])
        self.flags = [
            f"--web.listen-address=127.0.0.1:{self.port}",
            f"--state.directory={self.state_dir}",
            f"--libvirt.uri={uri}",
            *([f"--libvirt.pid-directory={pid_dir}"] if pid_dir else []),
            *([f"--libvirt.snapshot-directory={snapshot_dir}"] if snapshot_dir else []),
            *flags,
        ]
        self.command_prefix = command_prefix  # runs the exporter under it (setpriv, say)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ExporterProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [*self.command_prefix, sys.executable, "-m", "libvirt_snapshot_exporter", *self.flags],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self.wait_for(lambda: self.value("libvirt_up") == 1.0, 30, "libvirt_up 1")
        except BaseException:
            self.proc.kill()  # never leak an exporter that did not come up
            self.proc.wait()
            self.proc = None
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read().decode()

    def samples(self) -> list[Sample]:
        text = self.get("/metrics")
        return [
            (s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample with this name and (a subset of) these labels."""
        try:
            found = [v for n, lab, v in self.samples()
                     if n == name and all(lab.get(k) == w for k, w in labels.items())]
        except OSError:
            return None
        return found[0] if found else None

    def wait_for(self, check: Callable[[], object], timeout: float, what: str,
                 interval: float = 0.2) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"exporter exited ({self.proc.returncode}): {self.log()}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.log()[-3000:]}")


def logged_entries(path: Path) -> list[dict]:
    """The entries of an operations log file as the exporter reads it back: an entry appended
    again (its verdict came later) replaces the earlier line, in the earlier one's place."""
    from libvirt_snapshot_exporter.model.operation import FinishedOperation

    entries: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        entries[FinishedOperation.from_json(entry).id] = entry
    return list(entries.values())
