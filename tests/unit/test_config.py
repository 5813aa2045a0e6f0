"""Configuration and command line: bad input exits 2 with one line naming what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest
from libvirt_snapshot_exporter.config import ConfigError, build


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter", *args],
                          capture_output=True, text=True, timeout=30)


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_unknown_flag_exits_2():
    one_line_error(run("--web.listen-adress=:1"), "unrecognized arguments", "--web.listen-adress")


def test_malformed_yaml_exits_2(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("web.listen-address: [unclosed\n")
    one_line_error(run(f"--config.file={bad}", "--check-config"), str(bad), "not valid YAML")


def test_unknown_key_exits_2(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("libvirt.url: qemu:///system\n")
    one_line_error(run(f"--config.file={bad}", "--check-config"), "unknown key 'libvirt.url'")


def test_wrong_type_exits_2(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("collector.poll-interval: fast\n")
    one_line_error(run(f"--config.file={bad}", "--check-config"), "collector.poll-interval",
                   "expected float")


def test_unreadable_config_exits_2(tmp_path):
    one_line_error(run(f"--config.file={tmp_path}/missing.yml"), "cannot read")


def test_address_that_cannot_be_bound_exits_2():
    one_line_error(run("--web.listen-address=203.0.113.1:9", "--state.directory="),
                   "cannot listen on")


def test_valid_config_checks_clean(tmp_path):
    good = tmp_path / "good.yml"
    good.write_text("web.listen-address: 127.0.0.1:9999\ncollector.poll-interval: 2\n")
    result = run(f"--config.file={good}", "--check-config")
    assert result.returncode == 0 and "valid" in result.stdout


def test_flag_wins_over_file_wins_over_default(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("libvirt.uri: test:///default\nweb.telemetry-path: /m\n")
    config = build({"libvirt_uri": "qemu:///session"}, str(path))
    assert config["libvirt.uri"] == "qemu:///session"
    assert config["web.telemetry-path"] == "/m"
    assert config["collector.busy-interval"] == 0.25


@pytest.mark.parametrize("values, message", [
    ({"web_listen_address": "nonsense"}, "web.listen-address"),
    ({"collector_busy_interval": 5.0}, "collector.busy-interval"),
    ({"operations_log_size": 0}, "operations.log-size"),
    ({"log_level": "loud"}, "log.level"),
])
def test_invalid_values(values, message):
    with pytest.raises(ConfigError, match=message):
        build(values, None)
