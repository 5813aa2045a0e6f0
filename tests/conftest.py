"""Shared fixtures: a real libvirtd, real TCG guests, and the exporter as a real process."""

from __future__ import annotations

import libvirt
import pytest
from lse_devtools import testbed
from lse_devtools.exporter_proc import ExporterProcess


class Libvirt:
    """A read-write connection to a real libvirtd, opened again after libvirtd restarts."""

    def __init__(self) -> None:
        self._conn: libvirt.virConnect | None = None

    def get(self) -> libvirt.virConnect:
        if self._conn is None or not self._alive():
            self._conn = libvirt.open(testbed.URI)
        return self._conn

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive()) and self._conn.getLibVersion() > 0
        except libvirt.libvirtError:
            return False


@pytest.fixture(scope="session")
def libvirtd():
    """A real libvirtd (started here if none answers), cleared of leftovers of killed runs."""
    testbed.libvirtd_up()
    holder = Libvirt()
    testbed.remove_leftovers(holder.get())
    yield holder
    testbed.remove_leftovers(holder.get())


@pytest.fixture
def conn(libvirtd):
    return libvirtd.get()


@pytest.fixture(scope="session")
def filler(libvirtd):
    """A running guest whose RAM holds 640 MiB of random data: its snapshots take seconds."""
    guest = testbed.create_guest(libvirtd.get(), "filler", memory_mib=1024, fill_mib=640)
    guest.wait_ready(timeout=300)
    yield guest
    testbed.destroy_guest(libvirtd.get(), guest)


@pytest.fixture(scope="session")
def bare(libvirtd):
    """A running guest with no OS: it boots at once."""
    guest = testbed.create_guest(libvirtd.get(), "bare", memory_mib=128)
    yield guest
    testbed.destroy_guest(libvirtd.get(), guest)


@pytest.fixture(scope="session")
def exporter(libvirtd):
    proc = ExporterProcess().start()
    yield proc
    proc.stop()
