"""The web config file (exporter-toolkit format): parsing, its startup errors, basic auth.

What the same file does to real clients, side by side with node_exporter, is in
tests/integration/test_hardening.py.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
import sys
import time

import bcrypt
import pytest
from libvirt_snapshot_exporter.config import ConfigError
from libvirt_snapshot_exporter.web.webconfig import BasicAuth, load

# A fixed salt: the hash is in test ids, which pytest-xdist workers must all collect alike.
HASH_4 = bcrypt.hashpw(b"secret", b"$2b$04$C0RT3zwvFUN7jH66Gq9Oke").decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A self-signed certificate and its key, made by the openssl CLI."""
    where = tmp_path_factory.mktemp("certs")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", where / "server.key",
                    "-out", where / "server.crt", "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return where


def write(directory, text: str):
    path = directory / "web.yml"
    path.write_text(text)
    return path


def tls_file(certs, extra: str = "") -> str:
    return f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}"


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_no_file_means_plain_http():
    assert load("") is None


def test_empty_file_means_plain_http_without_auth(tmp_path):
    config = load(str(write(tmp_path, "")))
    assert config.tls is None and config.users == {} and config.headers == {}


def test_tls_paths_are_read_beside_the_file(certs, monkeypatch, tmp_path):
    path = write(certs, tls_file(certs, "  min_version: TLS13\n"))
    monkeypatch.chdir(tmp_path)  # nothing is read from the working directory
    config = load(str(path))
    assert isinstance(config.tls, ssl.SSLContext)
    assert config.tls.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.maximum_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.verify_mode == ssl.CERT_NONE


def test_toolkit_defaults_tls12_to_tls13(certs):
    tls = load(str(write(certs, tls_file(certs)))).tls
    assert (tls.minimum_version, tls.maximum_version) == (ssl.TLSVersion.TLSv1_2,
                                                          ssl.TLSVersion.TLSv1_3)
    assert tls.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_client_certificates_verified_against_the_ca(certs):
    tls = load(str(write(certs, tls_file(
        certs, "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: server.crt\n"
    )))).tls
    assert tls.verify_mode == ssl.CERT_REQUIRED
    assert tls.cert_store_stats()["x509_ca"] == 1


def test_users_and_headers(tmp_path):
    config = load(str(write(tmp_path, f"basic_auth_users:\n  alice: '{HASH_4}'\n"
                                      "http_server_config:\n  http2: false\n  headers:\n"
                                      "    X-Frame-Options: deny\n")))
    assert config.tls is None
    assert config.users == {"alice": HASH_4.encode()}
    assert config.headers == {"X-Frame-Options": "deny"}


@pytest.mark.parametrize("text, needle", [
    ("tls_server_config: [\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
    ("tls_config:\n  cert_file: x\n", "unknown key 'tls_config'"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  bogus: 1\n",
     "tls_server_config: unknown key 'bogus'"),
    ("http_server_config:\n  http3: true\n", "http_server_config: unknown key 'http3'"),
    ("basic_auth_users:\n  alice: secret\n", "password of 'alice' is not a bcrypt hash"),
    (f"basic_auth_users:\n  alice: '{HASH_4[:-1]}'\n", "is not a bcrypt hash"),
    (f"basic_auth_users:\n  alice: '{HASH_4.replace('$04$', '$03$')}'\n", "cost 4-31"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
     "cannot load cert_file"),
    ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
     "cannot load cert_file"),
    ("tls_server_config:\n  key_file: server.key\n", "missing cert_file"),
    ("tls_server_config:\n  cert_file: server.crt\n", "missing key_file"),
    ("tls_server_config:\n  client_ca_file: server.crt\n", "missing cert_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: Sometimes\n", "invalid client_auth_type 'Sometimes'"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAnyClientCert\n", "is not supported"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_ca_file: server.crt\n", "without a client_auth_type"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: missing.pem\n",
     "cannot load client_ca_file"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  min_version: TLS14\n", "min_version: unknown TLS version 'TLS14'"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n", "unknown cipher"),
    ("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
     "  curve_preferences: [CurveP255]\n", "unknown curve"),
    ("tls_server_config:\n  cert_file: [server.crt]\n  key_file: server.key\n",
     "cert_file: expected str"),
    ("http_server_config:\n  headers:\n    Server: nginx\n", "header 'Server' cannot be"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
     "X-Frame-Options must be one of deny, sameorigin"),
])
def test_bad_file_is_one_clear_error(certs, text, needle):
    with pytest.raises(ConfigError) as caught:
        load(str(write(certs, text)))
    message = str(caught.value)
    assert needle in message and "\n" not in message, message


def test_cipher_suites_map_to_openssl_names(certs):
    tls = load(str(write(certs, tls_file(
        certs, "  max_version: TLS12\n  cipher_suites:\n"
               "    - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n    - TLS_AES_128_GCM_SHA256\n"
    )))).tls
    tls12 = [c["name"] for c in tls.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES256-GCM-SHA384"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "libvirt_snapshot_exporter", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name, text, needle", [
    ("missing", None, "cannot read: No such file or directory"),
    ("directory", "dir", "cannot read: Is a directory"),
    ("unknown", "tls_server_config:\n  certfile: a\n", "unknown key 'certfile'"),
    ("hash", "basic_auth_users:\n  bob: plain\n", "not a bcrypt hash"),
    ("cert", "tls_server_config:\n  cert_file: gone.crt\n  key_file: gone.key\n",
     "cannot load cert_file"),
])
def test_bad_web_config_exits_2_with_one_line(tmp_path, name, text, needle):
    path = tmp_path / name
    if text == "dir":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    result = run(f"--web.config.file={path}", "--check-config")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"web.config.file {path}" in lines[0] and needle in lines[0], lines[0]


def test_good_web_config_checks_clean(certs):
    result = run(f"--web.config.file={write(certs, tls_file(certs))}", "--check-config")
    assert result.returncode == 0 and result.stderr == "", result


def test_basic_auth_accepts_only_the_right_password():
    auth = BasicAuth({"alice": HASH_4.encode(), "bob": HASH_4.replace("$2b$", "$2y$").encode()})
    assert auth.allows(header("alice", "secret"))
    assert auth.allows(header("bob", "secret"))  # htpasswd's $2y$ hashes work
    assert auth.allows("bAsIc " + header("alice", "secret")[6:])  # scheme is case-insensitive
    for bad in (None, "", "Bearer x", header("alice", "wrong"), header("alice", ""),
                header("carol", "secret"), "Basic !!!", "Basic " + base64.b64encode(b"x").decode(),
                header("alice", "secret")[:-2]):
        assert not auth.allows(bad), bad


def test_basic_auth_pays_bcrypt_once_per_credentials():
    """Cost 12 takes about 0.25 s here; a cached check takes microseconds."""
    auth = BasicAuth({"alice": bcrypt.hashpw(b"secret", bcrypt.gensalt(12))})

    def timed(value: str) -> tuple[bool, float]:
        start = time.perf_counter()
        return auth.allows(value), time.perf_counter() - start

    first, first_time = timed(header("alice", "secret"))
    again, again_time = timed(header("alice", "secret"))
    assert first and again
    assert first_time > 0.05 and again_time < 0.02, (first_time, again_time)
    wrong, wrong_time = timed(header("alice", "nope"))
    assert not wrong and wrong_time > 0.05  # a new password pays bcrypt again
    # An unknown user pays bcrypt too (the toolkit's fixed hash): no user enumeration by timing.
    unknown, unknown_time = timed(header("mallory", "secret"))
    assert not unknown and unknown_time > 0.02, unknown_time


def test_long_passwords_compare_like_go_bcrypt():
    """Go's bcrypt (and htpasswd) use the first 72 bytes; Python's bcrypt 5 refuses more."""
    auth = BasicAuth({"alice": bcrypt.hashpw(b"p" * 72, bcrypt.gensalt(4))})
    assert auth.allows(header("alice", "p" * 100))
    assert not auth.allows(header("alice", "p" * 71))


def raw_header(credentials: bytes) -> str:
    """As WSGI hands a header over: its bytes as latin-1 text."""
    return "Basic " + base64.b64encode(credentials).decode()


@pytest.mark.parametrize("value", [
    raw_header(b"\xff\xfe:secret"), raw_header(b"\xed\xa0\x80:secret"),  # user not UTF-8
    raw_header(b"alice\xff:secret"), raw_header(b"alice:\xff\xfe"), raw_header(b"alice:se\0cret"),
    raw_header(b"\0:\0"), raw_header(b":"), raw_header(b"alice:" + b"x" * 10_000),
    "Basic \u00e9\u00e9\u00e9\u00e9", "Basic " + "A" * 100_001, "Basic", "Basic ", "basic ====",
])
def test_basic_auth_refuses_hostile_credentials_without_raising(value):
    auth = BasicAuth({"alice": HASH_4.encode(), "\u00e9": HASH_4.encode()})
    assert auth.allows(value) is False


def test_basic_auth_user_names_are_compared_as_utf8_bytes():
    auth = BasicAuth({"\u00e9": HASH_4.encode()})
    assert auth.allows(raw_header("\u00e9:secret".encode()))
    assert not auth.allows(raw_header("\u00e9".encode("latin-1") + b":secret"))


@pytest.mark.parametrize("value", [
    '"default-src none\\r\\nX-Injected: 1"', '"a\\nb"', '"a\\rb"', '"a\\0b"', '"a\\x7fb"',
    '"a\\tb\\u2028"',
    "' leading'", "'trailing '", "''", "'caf\u00e9'", "[a, b]", "{a: 1}", "null", "true",
])
def test_header_values_that_would_break_the_response_are_refused(tmp_path, value):
    text = f"http_server_config:\n  headers:\n    Content-Security-Policy: {value}\n"
    with pytest.raises(ConfigError) as caught:
        load(str(write(tmp_path, text)))
    message = str(caught.value)
    assert "Content-Security-Policy" in message and "\n" not in message, message


def test_plain_header_values_load(tmp_path):
    text = ("http_server_config:\n  headers:\n    Content-Security-Policy: \"default-src 'none'\"\n"
            "    X-XSS-Protection: 0\n    Strict-Transport-Security: max-age=31536000\n")
    assert load(str(write(tmp_path, text))).headers == {
        "Content-Security-Policy": "default-src 'none'", "X-XSS-Protection": "0",
        "Strict-Transport-Security": "max-age=31536000"}


def test_header_injection_exits_2_with_one_line(tmp_path):
    path = write(tmp_path, "http_server_config:\n  headers:\n"
                           "    Content-Security-Policy: \"a\\r\\nSet-Cookie: x=1\"\n")
    result = run(f"--web.config.file={path}", "--check-config")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
