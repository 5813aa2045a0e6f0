"""Configuration and command line: bad input exits 2 with one line naming what is wrong."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from libvirt_snapshot_exporter.config import MAX_YAML_BYTES, ConfigError, build, external_url


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


# --- every number from a flag or the file has a range; every string is printable ------------------

NUMBERS = {
    "libvirt.timeout": ("0.1", "300"), "operations.log-size": ("1", "100000"),
    "collector.poll-interval": ("0.1", "600"), "collector.busy-interval": ("0.1", "60"),
    "collector.max-calls-per-second": ("1", "10000"), "collector.stats-interval": ("1", "3600"),
}


@pytest.mark.parametrize("key", sorted(NUMBERS))
@pytest.mark.parametrize("value, needle", [
    ("inf", "finite"), ("-inf", "finite"), ("nan", "finite"), ("1e309", "finite"),
    ("0", "between"), ("-1", "between"), ("1e-9", "between"), ("1e9", "between"),
])
def test_numbers_out_of_range_exit_2(key, value, needle):
    if key == "operations.log-size" and not value.lstrip("-").isdigit():
        needle = "invalid int value"  # argparse refuses them for an integer flag
    one_line_error(run(f"--{key}={value}", "--check-config"), key, needle)


@pytest.mark.parametrize("key", sorted(NUMBERS))
def test_both_ends_of_each_range_are_valid(key):
    low, high = NUMBERS[key]
    for value in (low, high):
        poll = ["--collector.poll-interval=600"] if key == "collector.busy-interval" else []
        busy = ["--collector.busy-interval=0.1"] if key == "collector.poll-interval" else []
        result = run(f"--{key}={value}", *poll, *busy, "--check-config")
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("text, needle", [
    ("libvirt.timeout: .inf\n", "finite"), ("libvirt.timeout: .nan\n", "finite"),
    ("libvirt.timeout: -.inf\n", "finite"), ("libvirt.timeout: 1.0e+400\n", "finite"),
    (f"libvirt.timeout: {10**400}\n", "out of range"),
    ("operations.log-size: 1000000000000\n", "between"),
    ("collector.poll-interval: 0.0000001\n", "between"),
    ("operations.log-size: 10.5\n", "expected int"), ("libvirt.timeout: true\n", "expected float"),
    ("state.directory: \"/var/lib/x\\0y\"\n", "control character"),
    ("libvirt.uri: \"qemu:///system\\nX\"\n", "control character"),
    ("node.hostname: \"a\\x1bb\"\n", "control character"),
    ("[" * 100_000 + "\n", "nested too deeply"),
    ("libvirt.timeout: 1" + "0" * 5000 + "\n", "digits"),  # Python refuses to build the int
])
def test_bad_values_in_the_file_exit_2(tmp_path, text, needle):
    path = tmp_path / "c.yml"
    path.write_text(text)
    one_line_error(run(f"--config.file={path}", "--check-config"), needle)


def test_config_file_not_utf8_exits_2(tmp_path):
    path = tmp_path / "c.yml"
    path.write_bytes(b"node.hostname: \"\xff\"\n")
    one_line_error(run(f"--config.file={path}", "--check-config"), "not UTF-8")


@pytest.mark.parametrize("address, expected", [
    (":9966", ("", 9966)), ("[::]:9966", ("::", 9966)), ("[::1]:1", ("::1", 1)),
    ("127.0.0.1:65535", ("127.0.0.1", 65535)), ("localhost:80", ("localhost", 80)),
])
def test_listen_addresses(address, expected):
    assert build({"web_listen_address": address}, None).listen == expected


@pytest.mark.parametrize("address", [
    "::1:9966", "[::1]", "[nonsense]:1", "[::1:1", ":0", ":65536", ":\u0669\u0669", "[]:1",
    ":" + "0" * 5000 + "1",  # an int Python refuses to build
])
def test_bad_listen_addresses(address):
    with pytest.raises(ConfigError, match="web.listen-address"):
        build({"web_listen_address": address}, None)


def test_domain_histograms_is_a_flag_and_a_key(tmp_path):
    from libvirt_snapshot_exporter.cli import load

    assert build({}, None)["collector.domain-histograms"] is False
    path = tmp_path / "c.yml"
    path.write_text("collector.domain-histograms: true\n")
    assert load([f"--config.file={path}"])[0]["collector.domain-histograms"] is True
    assert load([f"--config.file={path}", "--no-collector.domain-histograms"]
                )[0]["collector.domain-histograms"] is False
    assert load(["--collector.domain-histograms"])[0]["collector.domain-histograms"] is True


@pytest.mark.parametrize("text", ["collector.domain-histograms: 1\n",
                                  "collector.domain-histograms: 'yes'\n"])
def test_domain_histograms_must_be_a_boolean(tmp_path, text):
    bad = tmp_path / "bad.yml"
    bad.write_text(text)
    one_line_error(run(f"--config.file={bad}", "--check-config"), "collector.domain-histograms",
                   "expected bool")


def test_flag_with_a_value_is_refused():
    one_line_error(run("--collector.domain-histograms=false"), "collector.domain-histograms")


@pytest.mark.parametrize("url, needle", [
    ("ftp://hv1:9966", "not an http:// or https:// URL"), ("hv1:9966", "not an http"),
    ("http://", "with a host"), ("http://hv1:9966/?a=b", "no query"),
    ("http://hv1:9966/#top", "no query, fragment"),
])
def test_bad_external_urls_exit_2(url, needle):
    one_line_error(run(f"--web.external-url={url}", "--check-config"), "web.external-url", needle)


@pytest.mark.parametrize("given, listen, tls, expected", [
    ("https://hv1.example/exporter/", ":9966", False, "https://hv1.example/exporter"),
    ("", ":9966", False, "http://hv1.example:9966"),
    ("", "0.0.0.0:9100", True, "https://hv1.example:9100"),
    ("", "192.0.2.7:9966", False, "http://192.0.2.7:9966"),
    ("", "[2001:db8::7]:9966", False, "http://[2001:db8::7]:9966"),
])
def test_the_external_url_is_given_else_this_hosts_address(given, listen, tls, expected):
    config = build({"web_external_url": given or None, "web_listen_address": listen}, None)
    assert external_url(config, tls, "hv1.example") == expected


def _pem_pair(tmp_path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "server.key"),
                    "-out", str(tmp_path / "server.crt")], check=True, capture_output=True)


@pytest.mark.parametrize("which", ["config", "web config", "cert_file", "client_ca_file"])
def test_a_fifo_in_place_of_a_file_is_one_line_never_a_hang(tmp_path, which):
    """Every file the exporter reads at start goes through store/safe_file.py: a FIFO nobody
    writes to is refused at once, --check-config included."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    web = tmp_path / "web.yml"
    if which in ("cert_file", "client_ca_file"):
        _pem_pair(tmp_path)
        tls = {"cert_file": "cert_file: fifo\n  key_file: server.key\n",
               "client_ca_file": "cert_file: server.crt\n  key_file: server.key\n"
               "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: fifo\n"}[which]
        web.write_text("tls_server_config:\n  " + tls)
    flag = {"config": f"--config.file={fifo}", "web config": f"--web.config.file={fifo}"}.get(
        which, f"--web.config.file={web}")
    one_line_error(run(flag, "--check-config"), "not a regular file")


def test_a_config_file_too_big_is_one_line_and_a_symlink_to_one_is_followed(tmp_path):
    big = tmp_path / "big.yml"
    big.write_text("# " + "x" * MAX_YAML_BYTES + "\n")
    one_line_error(run(f"--config.file={big}", "--check-config"), "larger than")
    good = tmp_path / "good.yml"
    good.write_text("collector.poll-interval: 2\n")
    link = tmp_path / "link.yml"
    link.symlink_to(good)  # a config from a Kubernetes ConfigMap is a symlink
    assert run(f"--config.file={link}", "--check-config").returncode == 0
