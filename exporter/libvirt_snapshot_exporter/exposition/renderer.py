"""Exposition of the last published view; a scrape never calls libvirt.

Metric families are built with prometheus_client and formatted by its encoders, chosen by its
content negotiation (choose_encoder: the text format or OpenMetrics) and restricted by its
registry to `name[]` filters. In the formats Prometheus asks for (the text format and
OpenMetrics 1.0.0), without a filter, what belongs to one domain (and each series of the
hypervisor's histograms) is formatted once, as bytes, and kept until that domain's data (that
series) changes (the collection loop prepares it in the background), and each family's block
(its header and every domain's lines) is joined once and kept until one of its domains changes,
so a scrape of a thousand domains joins about a hundred blocks; exporter, host and in-flight
series are formatted on every scrape. A scrape that comes while the loop prepares serves the
domain text of the loop's previous cycle rather than wait. Filtered scrapes and other formats
build every family afresh.
"""

from __future__ import annotations

import gzip
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder

from ..model.samples import HostSample
from ..store.view import (
    DomainOperations,
    DomainView,
    Histogram,
    HostOperations,
    OperationLabels,
    StateStore,
)
from . import gzip_blocks
from .families import MetricFamilies
from .operation_families import HOST_HISTOGRAMS

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


# ("domain" or "operations", domain name), ("durations" or "paused", labels), ("verdicts", "")
Part = tuple[str, str | OperationLabels]
PartData = DomainView | DomainOperations | Histogram | dict
Block = tuple[bytes, bytes | None]  # a family's header and lines; compressed, once asked for


class MetricsRenderer:
    """Renders /metrics, keeping each domain's sample lines as bytes, in each format asked for
    so far among CACHED_FORMATS, until its DomainView or its operations change (the daemon
    publishes the same objects again when nothing changed), and each family's block (its
    header and every domain's lines) until one of those changes."""

    def __init__(self, store: StateStore, external_url: str, domain_histograms: bool = False,
                 read_host: Callable[[], HostSample] | None = None) -> None:
        """read_host: the host's figures read afresh for each scrape, so that they match
        node_exporter's scraped beside them (a cycle's reading lagged by up to 536 MiB of Dirty
        during a snapshot); None: the collection loop's last reading."""
        self.store = store
        self.collector = MetricFamilies(external_url, domain_histograms)
        self.read_host = read_host
        # Held while the index below changes or a scrape reads it: never while formatting.
        self._lock = threading.Lock()
        # One prepare at a time (the loop's, or a scrape's when the loop is not preparing).
        self._preparing = threading.Lock()
        self._formats: dict[str, Encoder] = {TEXT_FORMAT[1]: TEXT_FORMAT[0]}
        # part -> (what was formatted, {format: the families it has lines in})
        self._parts: dict[Part, tuple[PartData, dict[str, tuple[str, ...]]]] = {}
        self._headers: dict[str, dict[str, bytes]] = {}  # format -> {family: header lines}
        # format -> family -> part -> sample lines, so that a family is joined without looking
        # through every domain for it
        self._samples: dict[str, dict[str, dict[Part, bytes]]] = {}
        # format -> family -> header and all its lines, until one of them changes
        # and its raw deflate data once a gzip scrape asked for it (both go when it changes)
        self._blocks: dict[str, dict[str, Block]] = {}
        # the domains, operations, the hypervisor's operations and number of formats last prepared
        self._seen: tuple[dict, dict, HostOperations | None, int] = ({}, {}, None, 0)

    def prepare(self) -> None:
        """Format what changed since the last call; the collection loop calls it after each
        publish, so a scrape finds the text ready."""
        with self._preparing:
            self._prepare()

    def _prepare(self) -> None:
        """Formats outside self._lock (a thousand changed domains take a while), then swaps
        the new lines in under it. Only a prepare changes self._parts: it reads it unlocked."""
        domains, operations = self.store.view.domains, self.store.operations.domains()
        host = self.store.operations.host
        with self._lock:
            formats = dict(self._formats)
        # Most cycles change nothing: dicts compare values by identity first, in C (20 us for a
        # thousand domains, against 1-3 ms for the loop below).
        seen = (domains, operations, host, len(formats))
        if seen == self._seen:
            return
        self._seen = seen
        # The hypervisor's histograms by series, first: an operation changes one of each
        # (formatting all of them at every change was 43 % of the exporter's CPU in a soak).
        current: dict[Part, PartData] = {}
        for table in HOST_HISTOGRAMS:
            current.update(((table, labels), h) for labels, h in sorted(getattr(host, table).items()))
        current[("verdicts", "")] = host.verdicts
        current.update((("domain", name), dom) for name, dom in domains.items())
        current.update((("operations", name), ops) for name, ops in operations.items())
        gone = [part for part in self._parts if part not in current]
        formatted = []
        for part, data in current.items():
            cached = self._parts.get(part)
            if cached is None or cached[0] is not data:
                missing = list(formats)
            elif len(cached[1]) == len(formats):
                continue  # unchanged, in every format
            else:
                missing = [ct for ct in formats if ct not in cached[1]]
            formatted.append((part, data, {ct: _format(self._families(part, data), formats[ct])
                                           for ct in missing}))
        if not gone and not formatted:
            return
        with self._lock:
            for part in gone:
                self._unindex(part, self._parts.pop(part)[1])
            for part, data, texts in formatted:
                cached = self._parts.get(part)
                if cached is None or cached[0] is not data:
                    if cached is not None:
                        self._unindex(part, cached[1])
                    cached = self._parts[part] = (data, {})
                for content_type, (headers, text, _) in texts.items():
                    self._index(part, cached[1], content_type, headers, text)

    def _families(self, part: Part, data: PartData) -> Iterable[Metric]:
        if part[0] == "domain":
            return self.collector.domain_families(part[1], data)
        if part[0] == "operations":
            return self.collector.operation_families(data)
        return self.collector.host_part_families(part[0], part[1], data)

    def _index(self, part: Part, families_of: dict[str, tuple[str, ...]], content_type: str,
               headers: dict[str, str], text: dict[str, str]) -> None:
        """Add one part's lines in one format; its families' blocks are joined anew."""
        known = self._headers.setdefault(content_type, {})
        for family, header in headers.items():
            known.setdefault(sys.intern(family), header.encode())
        by_family = self._samples.setdefault(content_type, {})
        blocks = self._blocks.setdefault(content_type, {})
        names = []
        for family, lines in text.items():
            if lines:
                family = sys.intern(family)  # one string per family, not one per domain
                by_family.setdefault(family, {})[part] = lines.encode()
                blocks.pop(family, None)
                names.append(family)
        families_of[content_type] = tuple(names)

    def _unindex(self, part: Part, families_of: dict[str, tuple[str, ...]]) -> None:
        """Take one domain part's sample lines, in every format, out of the by-family index."""
        for content_type, families in families_of.items():
            by_family = self._samples.get(content_type, {})
            blocks = self._blocks.get(content_type, {})
            for family in families:
                by_family.get(family, {}).pop(part, None)
                blocks.pop(family, None)

    def render(self, accept: str = "", names: Sequence[str] = (), compressed: bool = False
               ) -> tuple[bytes, str]:
        """The exposition the Accept header asks for, of the families named (all if none),
        gzip-compressed if asked, and its content type."""
        encoder, content_type = negotiate(accept)
        if not names and content_type in CACHED_FORMATS:
            return self._render_cached(encoder, content_type, compressed), content_type
        registry = CollectorRegistry(auto_describe=True)  # names for restricted_registry
        registry.register(_Families(_merged(self._all_families())))
        body = encoder(registry.restricted_registry(names) if names else registry)
        return (gzip.compress(body, gzip_blocks.LEVEL) if compressed else body), content_type

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

    def _render_cached(self, encoder: Encoder, content_type: str, compressed: bool) -> bytes:
        """Global families formatted now, then each family's block. A scrape brings the
        domain text up to date itself unless the loop is doing so: then it serves the text of
        the loop's previous cycle rather than wait (formatting a thousand changed domains takes
        longer than the scrape)."""
        if self._preparing.acquire(blocking=content_type not in self._formats):
            try:
                with self._lock:
                    self._formats.setdefault(content_type, encoder)
                self._prepare()
            finally:
                self._preparing.release()
        headers, text, trailer = _format(self.collector.scrape_families(
            self.store.view, time.time(), self._host_sample()), encoder)
        head, tail = ("".join(headers[f] + text[f] for f in headers)).encode(), trailer.encode()
        used: list[tuple[str, Block]] = []
        with self._lock:
            samples = self._samples.get(content_type, {})
            blocks = self._blocks.setdefault(content_type, {})
            for family, header in self._headers.get(content_type, {}).items():
                block = blocks.get(family)
                if block is None:
                    lines = header + b"".join(samples.get(family, {}).values())
                    block = blocks[family] = (lines, None)
                used.append((family, block))
        if not compressed:
            return b"".join([head, *(lines for _, (lines, _) in used), tail])
        return gzip_blocks.member([(head, gzip_blocks.deflated(head)),
                                   *self._packed(content_type, used),
                                   (tail, gzip_blocks.deflated(tail))])

    def _packed(self, content_type: str, used: list[tuple[str, Block]]
                ) -> list[tuple[bytes, bytes]]:
        """Each family's block with its raw deflate data: compressed once, outside the lock
        (compressing a block takes a while), and kept beside it until the block changes."""
        packed = [(lines, data if data is not None else gzip_blocks.deflated(lines))
                  for _, (lines, data) in used]
        with self._lock:
            blocks = self._blocks.get(content_type, {})
            for (family, block), kept in zip(used, packed, strict=True):
                if block[1] is None and blocks.get(family) is block:
                    blocks[family] = kept
        return packed
