"""docs/bundle.md documents every alert, recording rule and threshold as they are."""

from __future__ import annotations

import re

import pytest
from libvirt_snapshot_exporter.exposition.renderer import MetricsRenderer
from lse_devtools import handbuilt_view
from lse_devtools.bundle import (
    PROM,
    ROOT,
    alerting_rules,
    documented_metrics,
    load_yaml,
    recording_rules,
)

DOC = (ROOT / "docs" / "bundle.md").read_text()
THRESHOLDS = [r for g in load_yaml(PROM / "rules" / "thresholds.yml")["groups"]
              for r in g["rules"]]


def _table_row(name: str) -> str:
    rows = [line for line in DOC.splitlines()
            if line.startswith("|") and f"`{name}`" in line.split("|")[1]]
    assert len(rows) == 1, f"docs/bundle.md has {len(rows)} table rows for {name}"
    return rows[0]


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda r: r["alert"])
def test_every_alert_is_documented(rule):
    cells = [c.strip() for c in _table_row(rule["alert"]).split("|")[1:-1]]
    assert cells[1] == rule["labels"]["severity"]
    assert cells[2] == rule["for"]


@pytest.mark.parametrize("rule", [r for r in recording_rules()
                                  if not r["record"].startswith("libvirt_snapshot:threshold_")],
                         ids=lambda r: r["record"])
def test_every_recording_rule_is_documented(rule):
    assert _table_row(rule["record"])


@pytest.mark.parametrize("rule", THRESHOLDS, ids=lambda r: r["record"])
def test_every_threshold_is_documented_with_its_default(rule):
    value = re.fullmatch(r"vector\(([0-9.]+)\)", rule["expr"]).group(1)
    short = rule["record"].removeprefix("libvirt_snapshot:")
    pattern = re.compile(rf"`(libvirt_snapshot:)?{re.escape(short)}`[^|]*?\b{re.escape(value)}\b")
    assert pattern.search(DOC), rule["record"]
    per_domain = "# per-domain" in _thresholds_line(rule["record"])
    if per_domain:
        assert re.search(rf"`libvirt_snapshot:{re.escape(short)}` [^|]*per domain", DOC), short


def _thresholds_line(record: str) -> str:
    text = (PROM / "rules" / "thresholds.yml").read_text()
    return next(line for line in text.splitlines() if f"record: {record}" in line)


def test_readme_links_the_bundle_docs():
    assert "docs/bundle.md" in (ROOT / "README.md").read_text()


def _exposed_types(domain_histograms: bool) -> dict[str, str]:
    """{family: type} of what the real exposition emits for a hand-built view holding every
    kind of series (TYPE lines of the text format name counters with their _total)."""
    body, _ = MetricsRenderer(handbuilt_view.store(0.0), domain_histograms).render()
    return {line.split()[2]: line.split()[3] for line in body.decode().splitlines()
            if line.startswith("# TYPE ")}


def test_readme_metric_tables_list_exactly_what_the_exposition_emits():
    documented = {name: kind for name, kind in documented_metrics().items()
                  if not any(name == base + suffix for base in documented_metrics()
                             for suffix in ("_bucket", "_sum", "_count"))}
    for domain_histograms in (False, True):
        exposed = _exposed_types(domain_histograms)
        assert sorted(exposed) == sorted(documented), f"domain-histograms={domain_histograms}"
        wrong = {name: (kind, documented[name]) for name, kind in exposed.items()
                 if kind not in documented[name].split(" or ")}
        assert not wrong, f"exposed type vs README.md's: {wrong}"


def test_test_files_have_unique_names():
    """pytest imports test files by their base name (no packages under tests/): two files of
    one name in different folders stop the whole run at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
