"""What the collection loop's steps share (domain_polls.py, sampling.py): the libvirt adapter,
the domains known so far, the tracker (asked whether a domain has an operation in flight),
each source's health and the calls that answer later. The loop makes one for all its steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..tracker.tracker import Tracker
from .domain_cache import DomainCache
from .later_calls import LaterCalls
from .source_health import SourceHealth

if TYPE_CHECKING:
    from ..sources.libvirt.adapter import LibvirtAdapter


@dataclass(frozen=True)
class LoopParts:
    adapter: LibvirtAdapter
    domains: dict[str, DomainCache]  # the polls add and drop domains, the others fill them in
    tracker: Tracker
    health: SourceHealth
    later: LaterCalls

    @classmethod
    def on(cls, adapter: LibvirtAdapter) -> LoopParts:
        """Fresh parts around one adapter: no domain known yet, every source healthy."""
        health = SourceHealth()
        return cls(adapter, {}, Tracker(), health, LaterCalls(health))
