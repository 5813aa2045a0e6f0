"""The domain as bench found it, and what differs at the end (bench promises none)."""

from __future__ import annotations

from dataclasses import dataclass

from .control import Domain


@dataclass(frozen=True)
class Found:
    state: str  # running | paused | shutoff | other
    snapshots: list[str]
    current: str | None
    sources: tuple[list[str], list[str]]  # the disks' of the live and the persistent definition
    caches: list[str]  # the live disks' cache modes
    definition: str  # the persistent definition's XML

    @classmethod
    def read(cls, domain: Domain) -> Found:
        live = domain.disks()
        persistent = [d.source for d in domain.disks(inactive=True)] if domain.persistent() else []
        return cls(domain.state(), domain.snapshot_names(), domain.current_snapshot(),
                   ([d.source for d in live], persistent), [d.cache for d in live],
                   domain.definition())

    def differences(self, now: Found) -> list[str]:
        """What is not as found, one sentence each (empty when all is)."""
        problems = []
        if now.sources != self.sources:
            problems.append(f"disk sources differ: found {self.sources}, now {now.sources}")
        if now.snapshots != self.snapshots:
            problems.append(f"snapshots differ: found {self.snapshots}, now {now.snapshots}")
        elif now.current != self.current:
            problems.append(f"current snapshot was {self.current}, now {now.current}")
        if now.state != self.state:
            problems.append(f"the domain was {self.state}, now {now.state}")
        if now.caches != self.caches:
            problems.append(f"disk cache modes differ: found {self.caches}, now {now.caches}")
        if now.definition != self.definition and not problems:
            problems.append("the persistent definition differs from the one found")
        return problems
