"""Changing a running domain's disk cache mode for a comparison, and putting it back.

libvirt refuses to change it live (updateDeviceFlags with VIR_DOMAIN_AFFECT_LIVE: "cannot
modify field 'cache' of the disk", libvirt 9.0), and a new persistent definition
(AFFECT_CONFIG, or defineXML) only applies at the next boot, which would lose the guest's
memory, the very thing the study loads. What libvirt does allow: a managed save of the domain
(its memory to libvirt's save directory, the domain shut off), a new definition of that save
image that differs only on the host side (managedSaveDefineXML; a guest-visible change such as
its memory is refused), then a start, which restores the guest where it was with the new
cache mode. The persistent definition is never touched. Putting it back is the same with the
definition saved the first time, so the domain ends as found: the same live definition (but
its id), the same persistent one, running or paused as it was, its guest's memory intact. It
costs a save and a restore of the guest's memory each time, and QEMU restarts (a new pid;
file-backed serial consoles are reopened).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any

from .control import ControlError, Domain

# What a step is called while it runs (the progress line, the Ctrl-C message).
SAVING = "saving the domain"
STARTING = "starting the domain"


def with_cache(xml: str, mode: str) -> str:
    """The domain XML with every disk's (and LUN's) cache mode set to `mode`; the rest as it
    was, namespaced elements (qemu:commandline) included."""
    for _event, (prefix, uri) in ET.iterparse(StringIO(xml), events=("start-ns",)):
        ET.register_namespace(prefix, uri)
    root = ET.fromstring(xml)
    for disk in root.findall("devices/disk"):
        if disk.get("device", "disk") not in ("disk", "lun"):
            continue
        driver = disk.find("driver")
        if driver is None:
            driver = ET.Element("driver", name="qemu")
            disk.insert(0, driver)
        driver.set("cache", mode)
    return ET.tostring(root, encoding="unicode")


class CacheSwitch:
    """The domain's disk cache mode, changed through a managed save and put back the same way.

    `call(what, fn)` runs each libvirt step (bench runs them on a worker thread, so Ctrl-C is
    heard while one runs) and raises ControlError when it fails."""

    def __init__(self, domain: Domain, found_caches: list[str],
                 call: Callable[[str, Callable[[], Any]], Any]) -> None:
        self.domain = domain
        self.found_caches = found_caches
        self._call = call
        self.found_xml: str | None = None  # the live definition, as the first save has it
        self.mode: str | None = None  # None: as found
        self.saved = False  # shut off in a managed save, not started again yet

    def set(self, mode: str | None) -> bool:
        """Run with every disk in `mode` (None, or the mode every disk was found in: as
        found); True when the domain was restarted for it. When starting with it fails, the
        domain is started again as found and ControlError says why."""
        if mode is not None and all(c == mode for c in self.found_caches):
            mode = None
        if mode == self.mode:
            return False
        self.saved = True  # from the moment it is asked for, for leftovers()
        try:
            xml = self._call(SAVING, self.domain.save)
        except ControlError:
            self.saved = False  # a failed save leaves the domain as it was
            raise
        if self.found_xml is None:
            self.found_xml = xml
        target = self.found_xml if mode is None else with_cache(self.found_xml, mode)
        try:
            self._call(f"{STARTING} with cache={mode or 'as found'}",
                       lambda: self.domain.start_saved(target))
        except ControlError as exc:
            if mode is None:
                raise
            self._call(f"{STARTING} as found", lambda: self.domain.start_saved(self.found_xml))
            self.saved, self.mode = False, None
            raise ControlError(f"cannot run with cache={mode}: {exc}; started again as "
                               "found") from exc
        self.saved, self.mode = False, mode
        return True

    def restore(self) -> None:
        self.set(None)

    def leftovers(self, uri: str, found_file: Path) -> tuple[list[str], list[str]]:
        """What is not as found, and the commands that put it back ((lines, commands); both
        empty when nothing is changed). The definition as found is written to `found_file`
        (readable by its owner only: it may hold secrets) when the commands need it."""
        name = self.domain.name
        virsh = f"virsh -c {uri}"
        if self.saved and self.found_xml is None:  # the first save: its image is as found
            return ([f"  domain {name} was being saved (managed save) to change its cache "
                     "mode"], [f"  {virsh} start {name}    # once it is shut off"])
        if not self.saved and self.mode is None:
            return [], []
        fd = os.open(found_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(self.found_xml)
        restore = [f"  {virsh} managedsave-define {name} {found_file}", f"  {virsh} start {name}",
                   f"  rm -f {found_file}"]
        if self.saved:
            return ([f"  domain {name} is shut off in a managed save, or being saved or "
                     f"started (changing its cache mode); its definition as found is in "
                     f"{found_file}"], restore)
        return ([f"  domain {name} runs with cache={self.mode} (found "
                 f"{','.join(sorted(set(self.found_caches)))}); its definition as found is in "
                 f"{found_file}"], [f"  {virsh} managedsave {name}", *restore])
