"""The dashboard's queries as Grafana sends them: variables interpolated the way Grafana's
Prometheus data source does it, range panels and annotations as range queries, instant targets
as instant queries. Shared by the bundle tests (every query parsed by promtool) and the e2e
tests (every query answered by a real Prometheus)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from lse_devtools.bundle import JOB, ROOT, selectors

DASHBOARD_PATH = ROOT / "grafana" / "dashboards" / "libvirt-snapshots.json"
DASHBOARD = json.loads(DASHBOARD_PATH.read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
ROWS = [p for p in DASHBOARD["panels"] if p["type"] == "row"]
VARIABLES = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
# What a user has picked by default: the bundle's job, every other variable at All.
DEFAULTS: dict[str, str | None] = {"job": JOB, "hypervisor": None, "instance": None,
                                   "domain": None}

# Series that exist only while an operation runs, and rules built on them only.
IN_FLIGHT = {
    "libvirt_snapshot_operation_in_progress",
    "libvirt_snapshot_operation_in_progress_info",
    "libvirt_snapshot_operation_elapsed_seconds",
    "libvirt_snapshot_operation_start_timestamp_seconds",
    "libvirt_snapshot_operation_progress_estimate_ratio",
}
# `or vector(0)`, `or on () vector(0)`: a stat that shows 0 rather than nothing.
FALLBACK = re.compile(r"\s+or(\s+on\s*\(\s*\))?\s+vector\(0\)$")
TWIN = " without its fallback"
PANEL_STEP = 1.0  # Grafana's $__interval over a short range: the data source's scrape interval


@dataclass(frozen=True)
class Query:
    where: str
    expr: str
    instant: bool
    step: float  # of a range query; an annotation's own step

    @property
    def in_flight(self) -> bool:
        return any(name in IN_FLIGHT for name, _ in selectors(self.expr))

    @property
    def alerts(self) -> bool:
        return any(name == "ALERTS" for name, _ in selectors(self.expr))


def _seconds(duration: str) -> float:
    value, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()
    return float(value) * {"s": 1, "m": 60, "h": 3600}[unit]


def queries() -> list[Query]:
    """Every panel target and annotation; a query ending in a FALLBACK also without it (named
    where + TWIN), so that its real part is checked. A count of firing alerts has no twin:
    its real part answers only while such an alert fires (a stuck operation: 30 minutes)."""
    found = [Query(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"],
                   bool(t.get("instant")), PANEL_STEP)
             for p in PANELS for t in p["targets"]]
    found += [Query(f"annotation {a['name']!r}", a["expr"], False, _seconds(a["step"]))
              for a in DASHBOARD["annotations"]["list"] if "expr" in a]
    found += [Query(q.where + TWIN, FALLBACK.sub("", q.expr), q.instant, q.step)
              for q in found if FALLBACK.search(q.expr) and not q.alerts]
    return found


def variables() -> dict[str, str]:
    """name: series selector of each label_values(selector, name) template variable."""
    return {name: label_values_selector(v["query"]["query"])
            for name, v in VARIABLES.items() if v["type"] == "query"}


def _regex_escape(value: str) -> str:
    """Grafana's prometheusSpecialRegexEscape for one value of a multi-value variable."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(expr: str, values: dict[str, str | None], scrape_interval: float,
                interval: float) -> str:
    """Fill in $name (None: All, the variable's allValue; a variable not given: its DEFAULTS
    value, so the bundle's job) and $__rate_interval, which Grafana computes as
    max($__interval + scrape interval, 4 x scrape interval)."""
    rate = max(interval + scrape_interval, 4 * scrape_interval)
    expr = expr.replace("$__rate_interval", f"{rate:g}s")
    values = {**DEFAULTS, **values}
    for name in sorted(values, key=len, reverse=True):
        value = values[name]
        expr = expr.replace(f"${name}", VARIABLES[name]["allValue"] if value is None
                            else _regex_escape(value))
    assert "$" not in expr, expr
    return expr


def label_values_selector(query: str) -> str:
    """The series selector of a label_values(selector, label) variable query."""
    m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip(), flags=re.S)
    assert m, f"variable query {query!r} is not label_values(selector, label)"
    return m.group(1)


def expressions() -> list[tuple[str, str]]:
    """(where, expr) of every PromQL query of the dashboard: targets, annotations, variables."""
    found = [(f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
             for p in PANELS for t in p["targets"]]
    found += [(f"annotation {a['name']!r}", a["expr"])
              for a in DASHBOARD["annotations"]["list"] if "expr" in a]
    found += [(f"variable {name}", selector) for name, selector in variables().items()]
    return found


def as_sent_at_all(expr: str) -> str:
    """A dashboard query as Prometheus receives it from Grafana with the bundle's job and
    every other variable at All."""
    return interpolate(expr, {}, 15.0, 15.0)


# Data links and annotation texts as Grafana fills them in.
_LINK_VARIABLE = re.compile(r"\$\{__(?:data\.fields|field\.labels)\.(\w+)\}")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def panel_links(panel: dict) -> list[dict]:
    """The data links of a panel: its defaults' and its overrides'."""
    config = panel["fieldConfig"]
    links = list(config["defaults"].get("links", []))
    for override in config.get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "links":
                links += prop["value"]
    return links


def resolve_link(url: str, fields: dict[str, str]) -> str:
    """A data link's URL for one table row or series: ${__data.fields.NAME} and
    ${__field.labels.NAME} replaced by that field's (label's) value."""
    return _LINK_VARIABLE.sub(lambda m: fields[m.group(1)], url)


def render_text(text_format: str, labels: dict[str, str]) -> str:
    """An annotation's titleFormat or textFormat with {{label}} filled in, as Grafana's
    Prometheus data source does (a label the series lacks: empty)."""
    return _LEGEND_LABEL.sub(lambda m: labels.get(m.group(1), ""), text_format)
