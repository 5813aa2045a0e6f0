"""The exposition without libvirt: a hand-built view (lse_devtools.handbuilt_view) rendered by the real
MetricsRenderer, compared with golden files and checked by promtool.

To accept a deliberate change of the exposition, write the golden files anew with
`LSE_WRITE_GOLDEN=1 .venv/bin/pytest tests/unit/test_exposition.py` and review the diff.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import platform
import shutil
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.exposition import renderer as exposition
from libvirt_snapshot_exporter.exposition.renderer import MetricsRenderer
from lse_devtools import handbuilt_view

GOLDEN = Path(__file__).parent / "golden"
NOW = 1_700_000_000.0
OPENMETRICS = "application/openmetrics-text;version=1.0.0"
PYTHON = f'python_version="{platform.python_version()}"'


@pytest.fixture
def frozen_clock(monkeypatch):
    """Scrape-time figures (elapsed time, collection age) computed at NOW."""
    monkeypatch.setattr(exposition, "time", types.SimpleNamespace(time=lambda: NOW))


def render(domain_histograms: bool, accept: str = "", names: tuple[str, ...] = ()) -> str:
    renderer = MetricsRenderer(handbuilt_view.store(NOW), handbuilt_view.EXTERNAL_URL,
                               domain_histograms)
    body, _ = renderer.render(accept, names)
    return body.decode()


def _matches_golden(text: str, name: str) -> None:
    text = text.replace(PYTHON, 'python_version="PYTHON"')  # the one machine-dependent label
    path = GOLDEN / name
    if os.environ.get("LSE_WRITE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"exposition differs from {path}"


@pytest.mark.parametrize("domain_histograms,golden", [
    (False, "exposition.prom"), (True, "exposition-domain-histograms.prom"),
])
def test_exposition_matches_golden_file(frozen_clock, domain_histograms, golden):
    _matches_golden(render(domain_histograms), golden)


def test_openmetrics_matches_golden_file(frozen_clock):
    _matches_golden(render(False, OPENMETRICS), "exposition.openmetrics")


@pytest.mark.parametrize("domain_histograms", [False, True])
def test_promtool_check_metrics_is_clean(frozen_clock, domain_histograms):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required: apt-get install prometheus"
    result = subprocess.run([promtool, "check", "metrics"], input=render(domain_histograms),
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("accept", ["", OPENMETRICS])
def test_cached_rendering_equals_a_fresh_one(frozen_clock, accept):
    """The per-domain text cache gives what building every family afresh gives (a name[]
    filter naming every family takes the uncached path)."""
    cached = render(False, accept)
    names = tuple({line.split("{")[0].split()[0] for line in cached.splitlines()
                   if line and not line.startswith("#")})
    fresh = render(False, accept, names)
    assert sorted(cached.splitlines()) == sorted(fresh.splitlines())


def test_domain_series_without_the_option_are_counts_and_sums(frozen_clock):
    text = render(False)
    assert "# TYPE libvirt_snapshot_domain_operation_duration_seconds summary" in text
    assert "libvirt_snapshot_domain_operation_duration_seconds_bucket" not in text
    assert ('libvirt_snapshot_domain_operation_duration_seconds_count{domain="vm1",'
            'kind="internal",memory="true",operation="create",outcome="success"} 4.0') in text
    assert ('libvirt_snapshot_operation_duration_seconds_bucket{kind="internal",'
            'le="60.0",memory="true",operation="create",outcome="success"} 3.0') in text


def test_hypervisor_histograms_outlive_an_undefined_domain():
    store = handbuilt_view.store(NOW)
    store.operations.forget_domain("vm1")
    text = MetricsRenderer(store, handbuilt_view.EXTERNAL_URL).render()[0].decode()
    assert 'libvirt_snapshot_domain_operation_duration_seconds_count{domain="vm1"' not in text
    assert ('libvirt_snapshot_operation_duration_seconds_count{kind="internal",'
            'memory="true",operation="create",outcome="success"} 4.0') in text


def test_the_store_exposition_and_web_never_import_libvirt():
    code = ("import sys; sys.modules['libvirt'] = None\n"
            "from lse_devtools import handbuilt_view\n"
            "from libvirt_snapshot_exporter.store import oplog, view as state\n"
            "from libvirt_snapshot_exporter.web import routes as web\n"
            "from libvirt_snapshot_exporter.exposition.renderer import MetricsRenderer\n"
            "body, _ = MetricsRenderer(handbuilt_view.store(0.0),\n"
            "                          handbuilt_view.EXTERNAL_URL).render()\n"
            "assert b'libvirt_snapshot_operation_duration_seconds_bucket' in body\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_a_scrape_while_the_loop_prepares_serves_the_text_it_has_rather_than_wait(frozen_clock):
    store = handbuilt_view.store(NOW)
    renderer = MetricsRenderer(store, handbuilt_view.EXTERNAL_URL)
    before = renderer.render()[0]
    store.publish(dataclasses.replace(store.view, domains={"vm1": store.view.domains["vm1"]}))
    with renderer._preparing:  # the collection loop formatting what changed
        assert renderer.render()[0] == before  # at once, the previous cycle's domain text
    assert b'libvirt_domain_state{domain="vm2"}' not in renderer.render()[0]


def test_changed_and_vanished_domains_leave_the_cached_text(frozen_clock):
    store = handbuilt_view.store(NOW)
    renderer = MetricsRenderer(store, handbuilt_view.EXTERNAL_URL)
    before = renderer.render()[0].decode()
    assert 'libvirt_domain_state{domain="vm2"} 5.0' in before
    store.publish(dataclasses.replace(store.view, domains={"vm1": store.view.domains["vm1"]}))
    store.operations.forget_domain("vm2")
    store.operations.record(handbuilt_view._entry("vm1", "create", 60.0, NOW))
    after = renderer.render()[0].decode()
    assert 'domain="vm2"' not in after.split("# HELP libvirt_snapshot_operation_in_progress")[0]
    assert ('libvirt_snapshot_domain_operation_duration_seconds_count{domain="vm1",'
            'kind="internal",memory="true",operation="create",outcome="success"} 5.0') in after
    assert sorted(after.splitlines()) == sorted(
        MetricsRenderer(store, handbuilt_view.EXTERNAL_URL).render()[0].decode().splitlines())


def test_each_last_operation_links_its_page_under_the_external_url(frozen_clock):
    store = handbuilt_view.store(NOW)
    text = MetricsRenderer(store, "https://proxy.example/hv1").render()[0].decode()
    for ops in store.operations.domains().values():
        for operation, entry in ops.last.items():
            assert (f'libvirt_snapshot_last_operation_info{{domain="{entry.domain}",'
                    f'id="{entry.id}",operation="{operation}",'
                    f'url="https://proxy.example/hv1/operations/{entry.id}"}} 1.0') in text
    assert 'libvirt_snapshot_exporter_url_info{url="https://proxy.example/hv1"} 1.0' in text


def test_host_figures_are_read_when_scraped_else_the_loops_are_served(frozen_clock):
    """A scrape reads the host afresh (node_exporter beside it then agrees); a read that fails
    serves the collection loop's last reading instead of failing the scrape."""
    store = handbuilt_view.store(NOW)
    fresh = dataclasses.replace(store.view.host, memory={**store.view.host.memory, "dirty": 7})
    text = MetricsRenderer(store, handbuilt_view.EXTERNAL_URL,
                           read_host=lambda: fresh).render()[0].decode()
    assert "libvirt_node_memory_dirty_bytes 7.0" in text

    def unreadable():
        raise OSError(2, "No such file or directory")
    served = MetricsRenderer(store, handbuilt_view.EXTERNAL_URL, read_host=unreadable).render()
    assert served == MetricsRenderer(store, handbuilt_view.EXTERNAL_URL).render()


@pytest.mark.parametrize("accept,names", [("", ()), (OPENMETRICS, ()),
                                          ("", ("libvirt_domain_state",))])
def test_gzip_is_the_same_text_and_follows_a_changed_domain(frozen_clock, accept, names):
    store = handbuilt_view.store(NOW)
    renderer = MetricsRenderer(store, handbuilt_view.EXTERNAL_URL)
    for _ in range(2):  # the second from the blocks compressed by the first
        packed, ctype = renderer.render(accept, names, compressed=True)
        assert (gzip.decompress(packed), ctype) == renderer.render(accept, names)
    kept = renderer._blocks.get(ctype, {}).values()
    assert bool(kept) != bool(names) and all(data is not None for _, data in kept)
    store.publish(dataclasses.replace(store.view, domains={"vm1": store.view.domains["vm1"]}))
    packed = renderer.render(accept, names, compressed=True)[0]
    assert gzip.decompress(packed) == renderer.render(accept, names)[0]
    assert b'libvirt_domain_state{domain="vm2"}' not in gzip.decompress(packed)
    # one member, as readers that take only the first (curl, some browsers) need
    reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert reader.decompress(packed) == renderer.render(accept, names)[0]
    assert reader.eof and not reader.unused_data
