"""Test copies of the shipped bundle files. They keep every rule expression, threshold, route
and receiver; only addresses become this machine's loopback ports and waits become seconds, so
that a test sees in a minute what takes an hour in production."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import yaml

from lse_devtools.bundle import PROM, ROOT, load_yaml

SHORT = "1s"


def _swap(address: str, addresses: dict[str, str], where: str) -> str:
    assert address in addresses, f"{where}: no test address for {address}"
    return addresses[address]


def _swap_url(url: str, addresses: dict[str, str], where: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return parts._replace(netloc=_swap(parts.netloc, addresses, where)).geturl()


def prometheus_config(name: str, addresses: dict[str, str], drop: tuple[str, ...] = ()) -> dict:
    """prometheus/<name> scraping and evaluating every second, each host:port of it (static
    targets, Alertmanager, remote_write URLs) replaced through addresses, the top-level
    sections in drop removed."""
    config = load_yaml(PROM / name)
    for key in drop:
        del config[key]
    config["global"].update(scrape_interval=SHORT, scrape_timeout=SHORT, evaluation_interval=SHORT)
    for am in config.get("alerting", {}).get("alertmanagers", []):
        for static in am["static_configs"]:
            static["targets"] = [_swap(t, addresses, name) for t in static["targets"]]
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            static["targets"] = [_swap(t, addresses, name) for t in static["targets"]]
    for remote in config.get("remote_write", []):
        remote["url"] = _swap_url(remote["url"], addresses, name)
        remote.setdefault("queue_config", {})["batch_send_deadline"] = SHORT
    return config


def rules(dest: Path, local_overrides: list[dict] | None = None) -> None:
    """The shipped rule files with each alert's `for:` shortened and each group evaluated at
    the global interval (the hourly 7-day group too), plus a thresholds-local.yml holding
    local_overrides the way docs/bundle.md ("Changing thresholds") tells operators to."""
    dest.mkdir()
    for path in sorted((PROM / "rules").glob("*.yml")):
        copy = load_yaml(path)
        for group in copy["groups"]:
            group.pop("interval", None)
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = SHORT
        write_yaml(dest / path.name, copy)
    if local_overrides:
        assert not (dest / "thresholds-local.yml").exists()
        write_yaml(dest / "thresholds-local.yml", {"groups": [
            {"name": "libvirt-snapshot-thresholds-local", "rules": local_overrides}]})


def alertmanager_config(webhook: str) -> dict:
    """alertmanager/alertmanager.yml with 1 s group waits and every webhook sent to webhook
    (host:port), each receiver keeping its own path."""
    config = load_yaml(ROOT / "alertmanager" / "alertmanager.yml")
    root = config["route"]
    root.update(group_wait=SHORT, group_interval=SHORT)
    for route in root.get("routes", []):  # the ones that set their own
        for key in ("group_wait", "group_interval"):
            if key in route:
                route[key] = SHORT
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            netloc = urllib.parse.urlsplit(hook["url"]).netloc
            hook["url"] = _swap_url(hook["url"], {netloc: webhook}, "alertmanager.yml")
    return config


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
