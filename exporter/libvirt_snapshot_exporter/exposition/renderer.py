"""Exposition of the last published view; a scrape never calls libvirt.

Metric families are built with prometheus_client and formatted by its encoders, chosen by its
content negotiation (choose_encoder: the text format or OpenMetrics) and restricted by its
registry to `name[]` filters. In the formats Prometheus asks for (the text format and
OpenMetrics 1.0.0), without a filter, what belongs to one domain is formatted once and cached
until that domain's data changes (the collection loop prepares it in the background), so a
scrape of a thousand domains mostly concatenates text; exporter, host, in-flight series and the
hypervisor's histograms are formatted on every scrape. Filtered scrapes and other formats
build every family afresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from ..model.samples import HostSample
from ..store.view import DomainOperations, DomainView, StateStore
from .families import MetricFamilies

log = logging.getLogger(__name__)


class _Families:
    """What generate_latest needs: an object whose collect() yields families."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


def _merged(families: Iterable[Metric]) -> list[Metric]:
    """One family per name (each domain builds its own), as both formats require."""
    by_name: dict[str, Metric] = {}
    for family in families:
        merged = by_name.get(family.name)
        if merged is None:
            merged = by_name[family.name] = Metric(family.name, family.documentation,
                                                   family.type, family.unit)
        merged.samples.extend(family.samples)
    return list(by_name.values())


Encoder = Callable[[Any], bytes]
EOF_LINE = "# EOF\n"  # OpenMetrics' last line


def negotiate(accept: str) -> tuple[Encoder, str]:
    """prometheus_client's choice of format for an Accept header; its default format for a
    header it cannot parse (a version such as 'x.y' makes it raise)."""
    try:
        return choose_encoder(accept)
    except (TypeError, ValueError):
        return choose_encoder("")


# The formats Prometheus asks for (its scrape_protocols) and the default: these are kept
# formatted per domain. Any other (an odd version, an odd escaping) is built whole per scrape.
CACHED_FORMATS = frozenset(negotiate(accept)[1] for accept in (
    "", "text/plain;version=0.0.4", "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
))
TEXT_FORMAT = negotiate("")


def _format(families: Iterable[Metric], encoder: Encoder
            ) -> tuple[dict[str, str], dict[str, str], str]:
    """Exposition split by family: ({family: HELP, TYPE, UNIT lines}, {family: sample lines},
    and what ends the whole: OpenMetrics' '# EOF' line, else nothing)."""
    text = encoder(_Families(families)).decode()
    trailer = EOF_LINE if text.endswith(EOF_LINE) else ""
    text = text[:len(text) - len(trailer)]
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    family = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            family = line.split(" ", 3)[2]
            headers[family] = [line]
            samples[family] = []
        elif line.startswith("# "):
            headers[family].append(line)
        else:
            samples[family].append(line)
    return ({k: "".join(v) for k, v in headers.items()},
            {k: "".join(v) for k, v in samples.items()}, trailer)


class MetricsRenderer:
    """Renders /metrics, caching each domain's text, in each format asked for so far among
    CACHED_FORMATS, until its DomainView or its operations change (the daemon publishes the
    same objects again when nothing changed)."""

    def __init__(self, store: StateStore, external_url: str, domain_histograms: bool = False,
                 read_host: Callable[[], HostSample] | None = None) -> None:
        """read_host: the host's figures read afresh for each scrape, so that they match
        node_exporter's scraped beside them (a cycle's reading lagged by up to 536 MiB of Dirty
        during a snapshot); None: the collection loop's last reading."""
        self.store = store
        self.collector = MetricFamilies(external_url, domain_histograms)
        self.read_host = read_host
        self._lock = threading.Lock()
        self._formats: dict[str, Encoder] = {TEXT_FORMAT[1]: TEXT_FORMAT[0]}
        # name -> (what was formatted, {format: {family: sample lines}})
        self._domains: dict[str, tuple[DomainView, dict[str, dict[str, str]]]] = {}
        self._operations: dict[str, tuple[DomainOperations, dict[str, dict[str, str]]]] = {}
        self._headers: dict[str, dict[str, str]] = {}  # format -> {family: header lines}
        # format -> family -> (part, name) -> sample lines, so that a scrape joins each family
        # without looking through every domain for it
        self._samples: dict[str, dict[str, dict[tuple[str, str], str]]] = {}

    def prepare(self) -> None:
        """Format what changed since the last call; the collection loop calls it after each
        publish, so a scrape finds the text ready."""
        view = self.store.view
        operations = self.store.operations.domains()
        with self._lock:
            self._refresh("domain", self._domains, view.domains,
                          self.collector.domain_families)
            self._refresh("operations", self._operations, operations,
                          lambda _name, ops: self.collector.operation_families(ops))

    def _refresh(self, part: str, cache: dict[str, tuple[Any, dict[str, dict[str, str]]]],
                 current: dict[str, Any], families: Callable[[str, Any], Iterable[Metric]]
                 ) -> None:
        for name in [n for n in cache if n not in current]:
            self._unindex((part, name), cache.pop(name)[1])
        for name, data in current.items():
            cached = cache.get(name)
            if cached is None or cached[0] is not data:
                if cached is not None:
                    self._unindex((part, name), cached[1])
                cached = cache[name] = (data, {})
            for content_type, encoder in self._formats.items():
                if content_type not in cached[1]:
                    headers, text, _ = _format(families(name, data), encoder)
                    self._headers.setdefault(content_type, {}).update(headers)
                    cached[1][content_type] = text
                    by_family = self._samples.setdefault(content_type, {})
                    for family, lines in text.items():
                        if lines:
                            by_family.setdefault(family, {})[(part, name)] = lines

    def _unindex(self, key: tuple[str, str], formatted: dict[str, dict[str, str]]) -> None:
        """Take one domain part's sample lines, in every format, out of the by-family index."""
        for content_type, text in formatted.items():
            by_family = self._samples.get(content_type, {})
            for family in text:
                by_family.get(family, {}).pop(key, None)

    def render(self, accept: str = "", names: Sequence[str] = ()) -> tuple[bytes, str]:
        """The exposition the Accept header asks for, of the families named (all if none),
        and its content type."""
        encoder, content_type = negotiate(accept)
        if not names and content_type in CACHED_FORMATS:
            with self._lock:
                self._formats.setdefault(content_type, encoder)
            return self._render_cached(encoder, content_type), content_type
        registry = CollectorRegistry(auto_describe=True)  # names for restricted_registry
        registry.register(_Families(_merged(self._all_families())))
        return encoder(registry.restricted_registry(names) if names else registry), content_type

    def _all_families(self) -> Iterator[Metric]:
        view = self.store.view
        yield from self.collector.global_families(view, self.store.operations.host, time.time(),
                                                  self._host_sample())
        for name, dom in sorted(view.domains.items()):
            yield from self.collector.domain_families(name, dom)
        for _, ops in sorted(self.store.operations.domains().items()):
            yield from self.collector.operation_families(ops)

    def _host_sample(self) -> HostSample | None:
        if self.read_host is not None:
            try:
                return self.read_host()
            except (OSError, ValueError) as exc:  # the loop's HOST source reports it
                log.debug("host figures not read at scrape, the loop's are served: %s", exc)
        return self.store.view.host

    def _render_cached(self, encoder: Encoder, content_type: str) -> bytes:
        self.prepare()
        headers, text, trailer = _format(self.collector.global_families(
            self.store.view, self.store.operations.host, time.time(), self._host_sample()),
            encoder)
        parts = [headers[f] + text[f] for f in headers]
        with self._lock:
            samples = self._samples.get(content_type, {})
            for family, header in self._headers.get(content_type, {}).items():
                parts.append(header)
                parts.extend(samples.get(family, {}).values())
        parts.append(trailer)
        return "".join(parts).encode()
