"""The docs say what is: docs/bundle.md every alert, recording rule and threshold,
docs/metrics.md every metric emitted, docs/configuration.md every key of OPTIONS, and every
relative link of README.md and docs/ names a file that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.config import OPTIONS
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


README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_links_the_bundle_docs():
    """The README is short and points at the rest: every document of docs/ (research through
    its own pages) is linked from it."""
    linked = {(ROOT / target.split("#")[0]).resolve() for target in LINK.findall(README)}
    for doc in DOCS:
        if "research" not in doc.relative_to(ROOT / "docs").parts:
            assert doc.resolve() in linked, f"README.md does not link {doc.relative_to(ROOT)}"


@pytest.mark.parametrize("path", [ROOT / "README.md", ROOT / "RUNBOOK.md", ROOT / "CHANGELOG.md",
                                  *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_name_files_that_exist(path: Path):
    """Every relative link names an existing file, and its #anchor a heading of that file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        name, _, anchor = target.partition("#")
        linked = (path.parent / name) if name else path
        assert linked.exists(), f"{path.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{path.name}: {target}"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"```.*?```", "", path.read_text(), flags=re.S),
                          re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_no_document_gives_module_line_counts():
    """Module sizes went stale with every change; the docs describe folders, not line counts."""
    for path in [ROOT / "README.md", *DOCS]:
        assert not re.search(r"\|\s*lines\s*\|", path.read_text()), path.name


CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text()
CONFIG_ROW = re.compile(r"^\|\s*`([a-z][a-z.-]*)`\s*\|\s*([^|]*?)\s*\|", re.M)


def _default_text(option) -> str | None:
    """How the doc writes an option's default (None: in words, as for an empty string)."""
    if option.default == "":
        return None
    if isinstance(option.default, bool):
        return str(option.default).lower()
    if isinstance(option.default, float):
        return f"{option.default:g}"
    return str(option.default)


def test_configuration_doc_lists_exactly_the_keys_of_options():
    rows = dict(CONFIG_ROW.findall(CONFIG_DOC))
    assert sorted(rows) == sorted(o.key for o in OPTIONS)
    for option in OPTIONS:
        expected = _default_text(option)
        if expected is not None:
            assert rows[option.key].startswith(f"`{expected}`"), (option.key, rows[option.key])


def test_readme_flags_exist():
    """The README's flag table names real flags with their real defaults."""
    by_key = {o.key: o for o in OPTIONS}
    for key, default in re.findall(r"^\|\s*`--([a-z][a-z.-]*)`\s*\|\s*([^|]*?)\s*\|", README, re.M):
        assert key in by_key, key
        expected = _default_text(by_key[key])
        if expected is not None:
            assert default == f"`{expected}`", (key, default)


def _exposed_types(domain_histograms: bool) -> dict[str, str]:
    """{family: type} of what the real exposition emits for a hand-built view holding every
    kind of series (TYPE lines of the text format name counters with their _total)."""
    body, _ = MetricsRenderer(handbuilt_view.store(0.0), handbuilt_view.EXTERNAL_URL,
                              domain_histograms).render()
    return {line.split()[2]: line.split()[3] for line in body.decode().splitlines()
            if line.startswith("# TYPE ")}


def test_metric_tables_list_exactly_what_the_exposition_emits():
    """docs/metrics.md's tables (lse_devtools.bundle.documented_metrics) are the exporter's
    contract: exactly the families it emits, with their types."""
    documented = {name: kind for name, kind in documented_metrics().items()
                  if not any(name == base + suffix for base in documented_metrics()
                             for suffix in ("_bucket", "_sum", "_count"))}
    for domain_histograms in (False, True):
        exposed = _exposed_types(domain_histograms)
        assert sorted(exposed) == sorted(documented), f"domain-histograms={domain_histograms}"
        wrong = {name: (kind, documented[name]) for name, kind in exposed.items()
                 if kind not in documented[name].split(" or ")}
        assert not wrong, f"exposed type vs docs/metrics.md's: {wrong}"


def test_test_files_have_unique_names():
    """pytest imports test files by their base name (no packages under tests/): two files of
    one name in different folders stop the whole run at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_make_demo_installs_no_monitoring_service():
    """On a systemd host Debian's packages of Prometheus, Alertmanager, node_exporter and
    VictoriaMetrics start services listening on five ports: the demo uses none of them."""
    commands = subprocess.run(["make", "-n", "-B", "demo"], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=30).stdout
    assert "busybox-static" in commands  # the demo's own packages are what make -n shows
    for package in ("prometheus", "alertmanager", "node-exporter", "victoria-metrics"):
        assert package not in commands, f"make demo installs {package}"
