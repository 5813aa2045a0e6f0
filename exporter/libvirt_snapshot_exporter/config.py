"""Configuration: every command-line flag is also a key of the optional YAML file.

File keys are the flag names without the leading dashes (`web.listen-address: ":9966"`).
A flag given on the command line wins over the file, the file over the default.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from .store.safe_file import BadFile, read_bounded

# The config and web config files: a few hundred bytes each; a file over this is no config,
# and YAML's parser would hold many times its size.
MAX_YAML_BYTES = 2**20

class ConfigError(Exception):
    """A bad configuration; its message is one line naming the key and what is wrong."""


@dataclass(frozen=True)
class Option:
    key: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    bounds: tuple[float, float] | None = None  # numbers: the allowed range, ends included


OPTIONS = (
    Option("web.listen-address", str, ":9966", "address to listen on, [host]:port"),
    Option("web.telemetry-path", str, "/metrics", "path under which metrics are served"),
    Option("web.external-url", str, "",
           "URL at which users reach the exporter (through a proxy, with TLS...): links to "
           "operation pages and the runbook, in metrics, alerts and the dashboard, start with "
           "it; empty: http(s)://<this host's name>:<port>"),
    Option("web.config.file", str, "",
           "exporter-toolkit web config file (TLS, basic auth); empty: plain HTTP, no auth"),
    Option("libvirt.uri", str, "qemu:///system", "libvirt connection URI (opened read-only)"),
    Option("libvirt.timeout", float, 10.0, "deadline in seconds of every libvirt call",
           bounds=(0.1, 300)),
    Option("libvirt.pid-directory", str, "/run/libvirt/qemu",
           "where libvirt writes each QEMU's <domain>.pid"),
    Option("libvirt.snapshot-directory", str, "auto",
           "libvirt's snapshot metadata directory, watched for the exact end of each operation; "
           "auto: from libvirt.uri (qemu:///system: /var/lib/libvirt/qemu/snapshot, "
           "qemu:///session: ~/.config/libvirt/qemu/snapshot, other URIs: none); empty: none"),
    Option("path.procfs", str, "/proc", "procfs of the host (/host/proc in a container)"),
    Option("state.directory", str, "/var/lib/libvirt-snapshot-exporter",
           "where the operations log is kept; empty: keep it in memory only"),
    Option("operations.log-size", int, 1000, "operations kept in the log",
           bounds=(1, 100_000)),
    Option("trace.operations", int, 100,
           "operations whose trace (the flight recorder's samples around them) is kept; "
           "0: no flight recorder", bounds=(0, 10_000)),
    Option("trace.max-bytes", int, 64 * 2**20, "bytes the kept traces may take, in memory "
           "or on disk; the oldest go first", bounds=(2**20, 2**36)),
    Option("collector.poll-interval", float, 1.0,
           "seconds between polls of idle domains (state, controlInfo, snapshot list)",
           bounds=(0.1, 600)),
    Option("collector.busy-interval", float, 0.25,
           "seconds between polls of domains with an operation in flight",
           bounds=(0.1, 60)),
    Option("collector.max-calls-per-second", float, 200.0,
           "budget of idle-check libvirt calls per second: with many domains the idle check "
           "interval grows past poll-interval to stay within it", bounds=(1, 10_000)),
    Option("collector.stats-interval", float, 5.0,
           "seconds between guest statistics and QEMU process reads of idle domains",
           bounds=(1, 3600)),
    Option("collector.domain-histograms", bool, False,
           "per-domain duration and paused-time histogram buckets; without, each domain has "
           "counts and sums and the buckets are per hypervisor"),
    Option("verdict.rate-seed", str, "",
           "a bench --json output from this host: its creates seed the rate the verdict "
           "expects, beside the operations log's (default: the log's alone)"),
    Option("node.hostname", str, "", "host name in libvirt_node_info (default: the name libvirtd reports)"),
    Option("log.level", str, "info", "log level", choices=("debug", "info", "warning", "error")),
)
BY_KEY = {o.key: o for o in OPTIONS}


def dest(key: str) -> str:
    """The attribute name argparse gives a flag."""
    return key.replace(".", "_").replace("-", "_")


@dataclass(frozen=True)
class Config:
    values: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen_address(self.values["web.listen-address"])


def parse_listen_address(text: str) -> tuple[str, int]:
    """(host, port); host '' means every address, IPv6 and IPv4 alike."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit() and len(port) <= 5) \
            or not 0 < int(port) < 65536:
        raise ConfigError(f"web.listen-address: {text!r} is not [host]:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"web.listen-address: {host!r} is not an IPv6 address") from None
    elif any(c in host for c in ":[]"):
        raise ConfigError(f"web.listen-address: {text!r}: an IPv6 address goes in brackets, "
                          "as in [::1]:9966")
    return host, int(port)


def checked_url(text: str) -> str:
    """web.external-url without its trailing slash; ConfigError unless http(s)://host[/path]."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"web.external-url: {text!r} is not an http:// or https:// URL "
                          "with a host")
    if parts.query or parts.fragment or " " in text:
        raise ConfigError(f"web.external-url: {text!r}: no query, fragment or space, only "
                          "scheme, host, port and path")
    return text.rstrip("/")


def external_url(config: Config, tls: bool, hostname: str) -> str:
    """The configured web.external-url, else this host's address as the exporter listens."""
    if config["web.external-url"]:
        return config["web.external-url"]
    host, port = config.listen
    if not host or host in ("0.0.0.0", "::"):
        host = hostname
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def _check(option: Option, value: Any, where: str) -> Any:
    """The one check of every value, from a flag or the file: type, choices, range."""
    name = f"{where}{option.key}"
    if option.type is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{name}: {value} is out of range") from None
    if not isinstance(value, option.type) or (isinstance(value, bool) and option.type is not bool):
        raise ConfigError(
            f"{name}: expected {option.type.__name__}, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
        raise ConfigError(f"{name}: {value!r} contains a control character")
    if option.choices and value not in option.choices:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(option.choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    if option.bounds is not None and not option.bounds[0] <= value <= option.bounds[1]:
        low, high = (int(end) if option.type is int else f"{end:g}" for end in option.bounds)
        raise ConfigError(f"{name}: must be between {low} and {high}, got {value!r}")
    return value


def read_yaml(path: str, where: str) -> Any:
    """A YAML file's data; ConfigError (one line, starting with `where`) for a file that
    cannot be read (store/safe_file.py: not a regular file, or over MAX_YAML_BYTES), is not
    UTF-8, or is not YAML."""
    try:
        text = read_bounded(path, MAX_YAML_BYTES).decode("utf-8")
    except BadFile as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 (byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    except ValueError as exc:  # an integer of over 4,300 digits, which Python refuses to build
        raise ConfigError(f"{where}: {' '.join(str(exc).split())[:80]}") from None


def load_file(path: str) -> dict[str, Any]:
    """The YAML config file as validated key/values."""
    data = read_yaml(path, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        option = BY_KEY.get(key)
        if option is None:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        values[key] = _check(option, value, f"config file {path}: ")
    return values


def build(cli_values: dict[str, Any], config_file: str | None) -> Config:
    """Defaults, overridden by the file, overridden by flags given on the command line."""
    values = {o.key: o.default for o in OPTIONS}
    if config_file:
        values.update(load_file(config_file))
    for option in OPTIONS:
        given = cli_values.get(dest(option.key))
        if given is not None:
            values[option.key] = _check(option, given, "flag --")
    if not str(values["web.telemetry-path"]).startswith("/"):
        raise ConfigError("web.telemetry-path: must start with '/'")
    if values["web.external-url"]:
        values["web.external-url"] = checked_url(values["web.external-url"])
    if values["collector.busy-interval"] > values["collector.poll-interval"]:
        raise ConfigError("collector.busy-interval: must not exceed collector.poll-interval")
    config = Config(values)
    config.listen  # noqa: B018 - validates the address
    return config


class OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line naming it and exit 2: the exporter's and bench's alike."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
