"""The settings a bench run compares: each kind of snapshot under each disk cache mode asked
for (pure: from the command line's lists, no libvirt).

`--kind internal,external --cache none,writeback` runs the same chain four times over: the
cache mode is the outer loop, since changing it restarts the domain's QEMU (cache_mode.py),
and the kinds the inner one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("internal", "external", "disk-only")
# libvirt's disk cache modes (<driver cache=...>), bar "default", which names none.
CACHE_MODES = ("none", "writethrough", "writeback", "directsync", "unsafe")


@dataclass(frozen=True)
class Setting:
    """One compared setting: what the study wrote in its "flags" column, and the cache mode."""

    kind: str  # one of KINDS
    live: bool  # external with memory: copied while the guest runs
    cache: str | None  # the disks' cache mode for it; None: as the domain was found

    @property
    def flags(self) -> str:
        return "--live" if self.live else ""

    def label(self, offline: bool) -> str:
        """'internal', 'external --live', 'disk-only (shut off)'."""
        return " ".join(x for x in (self.kind, self.flags, "(shut off)" if offline else "") if x)


def _choices(allowed: tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of `allowed` values, none twice."""

    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",")]
        for value in values:
            if value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"not a {what}: {value!r} (one or more of {', '.join(allowed)}, "
                    "comma-separated)")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"a {what} is named twice: {text!r}")
        return values
    return parse


kinds = _choices(KINDS, "kind")
cache_modes = _choices(CACHE_MODES, "cache mode")


def settings(kinds: list[str], caches: list[str] | None, live: bool) -> list[Setting]:
    """Every (cache mode, kind) in the order given, cache modes outermost; `live` applies to
    the external kind only (libvirt copies memory live only to an external memory file)."""
    return [Setting(kind, live and kind == "external", cache)
            for cache in (caches or [None]) for kind in kinds]
