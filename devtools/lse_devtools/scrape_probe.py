"""Scrapes timed from a process of their own, as Prometheus scrapes: a client thread inside a
benchmark that drives libvirt from four other threads waits for that process's interpreter lock,
and its figures are partly the benchmark's own (issue 23).

    with ScrapeProbe(url, period=1.0) as probe:
        ...
    probe.latencies  # seconds, of the scrapes that answered; probe.errors: those that did not

Run alone, `python -m lse_devtools.scrape_probe URL PERIOD` scrapes every PERIOD seconds until
its stdin closes, then prints one JSON list of [start (epoch seconds), latency or null].
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
import urllib.request


class ScrapeProbe:
    def __init__(self, url: str, period: float) -> None:
        self.url, self.period = url, period
        self.scrapes: list[tuple[float, float | None]] = []  # (start, latency; None: failed)
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> ScrapeProbe:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lse_devtools.scrape_probe", self.url, str(self.period)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._proc.communicate(timeout=60)  # closes stdin: the probe stops and prints
        self.scrapes = [(start, latency) for start, latency in json.loads(out or "[]")]

    def within(self, windows: list[tuple[float, float]]) -> ScrapeProbe:
        """A probe holding only the scrapes that started inside one of the (start, end) windows."""
        kept = ScrapeProbe(self.url, self.period)
        kept.scrapes = [s for s in self.scrapes if any(a <= s[0] <= b for a, b in windows)]
        return kept

    @property
    def latencies(self) -> list[float]:
        return [latency for _, latency in self.scrapes if latency is not None]

    @property
    def errors(self) -> int:
        return sum(1 for _, latency in self.scrapes if latency is None)


def _run(url: str, period: float) -> None:
    scrapes: list[tuple[float, float | None]] = []
    while True:
        start, began = time.time(), time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read()
            scrapes.append((start, time.monotonic() - began))
        except OSError:
            scrapes.append((start, None))
        wait = max(0.0, period - (time.monotonic() - began))
        if select.select([sys.stdin], [], [], wait)[0] and not sys.stdin.read(1):
            break
    print(json.dumps(scrapes))


if __name__ == "__main__":
    _run(sys.argv[1], float(sys.argv[2]))
