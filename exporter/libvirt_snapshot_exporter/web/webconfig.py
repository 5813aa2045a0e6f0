"""The web configuration file (`--web.config.file`): TLS and basic auth, exporter-toolkit style.

Same schema and strictness as prometheus/exporter-toolkit 0.8 (the one in node_exporter 1.5), so
one file serves both exporters: unknown keys, bad bcrypt hashes, and certificates that cannot be
loaded are startup errors, and relative paths are read beside the file. Where Python's ssl cannot
do what Go's crypto/tls does, this module refuses or says so instead of silently weakening:
- `client_auth_type: RequireAnyClientCert` (a certificate required, never verified) is refused:
  Python's ssl verifies every certificate it asks for. Use RequireAndVerifyClientCert.
- `RequestClientCert` asks for no certificate: one asked for and never checked grants nothing.
- `curve_preferences` is checked but not applied (warned): Python's ssl has no API for a list.
The file is read once at startup (the toolkit rereads it per request): restart after a change.
It and the files it names are read as every file the exporter reads (store/safe_file.py): a
FIFO or a device in their place is one line and exit 2, never a start that hangs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import ssl
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from ..config import ConfigError, read_yaml
from ..store.safe_file import BadFile, read_bounded

log = logging.getLogger(__name__)

TLS_KEYS = {
    "cert_file": str, "key_file": str, "client_auth_type": str, "client_ca_file": str,
    "cipher_suites": list, "curve_preferences": list, "min_version": str, "max_version": str,
    "prefer_server_cipher_suites": bool,
}
HTTP_KEYS = {"http2": bool, "headers": dict}
# A certificate chain, a key or a CA bundle (Debian's, of every public CA: some 200 KB)
MAX_PEM_BYTES = 4 * 2**20
TOP_KEYS = {"tls_server_config": dict, "http_server_config": dict, "basic_auth_users": dict}

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "": ssl.CERT_NONE, "NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL, "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequireAnyClientCert", "RequireClientCert")
# Go's tls.CipherSuites() names -> OpenSSL names; None: a TLS 1.3 suite, which neither Go nor
# OpenSSL lets one configure (accepted, no effect, as in Go).
CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")
# Headers the toolkit lets one set, with the values it allows (empty: any value).
HEADERS = {
    "Strict-Transport-Security": (), "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
BCRYPT_HASH = re.compile(r"\$2[abxy]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
# bcrypt of "fakepassword" (the toolkit's): unknown users cost as much time as known ones.
FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
AUTH_CACHE_SIZE = 100


@dataclass
class WebConfig:
    """What the file asks for: a TLS context (None: plain HTTP), users, response headers."""

    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def _section(data: Any, keys: dict[str, type], where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        if key not in keys:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(keys)})")
        if value is not None and not isinstance(value, keys[key]):
            raise ConfigError(f"{where}.{key}: expected {keys[key].__name__}, "
                              f"got {type(value).__name__} {value!r}")
    return {k: v for k, v in data.items() if v is not None}


def load(path: str) -> WebConfig | None:
    """The parsed file, its certificates loaded; None when no file is given."""
    if not path:
        return None
    where = f"web.config.file {path}"
    top = _section(read_yaml(path, where), TOP_KEYS, where)
    base = Path(path).resolve().parent
    tls = _section(top.get("tls_server_config"), TLS_KEYS, f"{where}: tls_server_config")
    http = _section(top.get("http_server_config"), HTTP_KEYS, f"{where}: http_server_config")
    return WebConfig(
        tls=tls_context(tls, base, f"{where}: tls_server_config"),
        users=_users(top.get("basic_auth_users") or {}, f"{where}: basic_auth_users"),
        headers=_headers(http.get("headers") or {}, f"{where}: http_server_config.headers"),
    )


def _users(users: dict[Any, Any], where: str) -> dict[str, bytes]:
    checked = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise ConfigError(f"{where}: the password of {str(user)!r} is not a bcrypt hash "
                              "($2a$/$2b$/$2y$, cost 4-31)")
        checked[str(user)] = hashed.encode()
    return checked


# What an HTTP header value may hold (RFC 9110 field-value): visible ASCII, spaces and tabs
# inside. A CR or LF would end the header and start another one of the file's choosing.
HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")


def _headers(headers: dict[Any, Any], where: str) -> dict[str, str]:
    checked = {}
    for name, value in headers.items():
        if not isinstance(name, str) or name not in HEADERS:
            raise ConfigError(f"{where}: header {name!r} cannot be configured")
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # as Go's YAML reads `X-XSS-Protection: 0` into a string
        if not isinstance(value, str) or not HEADER_VALUE.fullmatch(value):
            raise ConfigError(f"{where}: {name}: {value!r} is not a header value (printable "
                              "ASCII, no line break)")
        allowed = HEADERS[name]
        if allowed and value not in allowed:
            raise ConfigError(f"{where}: {name} must be one of {', '.join(allowed)}, got {value!r}")
        checked[name] = value
    return checked


def _path(base: Path, value: str) -> str:
    return str(base / value) if value else ""


def tls_context(tls: dict[str, Any], base: Path, where: str) -> ssl.SSLContext | None:
    """A server context as the toolkit's ConfigToTLSConfig builds it; None: no TLS asked for."""
    cert, key = _path(base, tls.get("cert_file", "")), _path(base, tls.get("key_file", ""))
    client_ca = _path(base, tls.get("client_ca_file", ""))
    auth = tls.get("client_auth_type", "")
    if not (cert or key or client_ca or auth):
        return None
    if not cert:
        raise ConfigError(f"{where}: missing cert_file")
    if not key:
        raise ConfigError(f"{where}: missing key_file")
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise ConfigError(f"{where}: client_auth_type {auth} (any certificate, unverified) is not "
                          "supported: use RequireAndVerifyClientCert with client_ca_file")
    if auth not in CLIENT_AUTH:
        raise ConfigError(f"{where}: invalid client_auth_type {auth!r}")
    if client_ca and CLIENT_AUTH[auth] == ssl.CERT_NONE:
        raise ConfigError(f"{where}: client_ca_file is set without a client_auth_type that "
                          "verifies client certificates")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name, attribute, default in (("min_version", "minimum_version", "TLS12"),
                                     ("max_version", "maximum_version", "TLS13")):
        version = tls.get(name, default)
        if version not in TLS_VERSIONS:
            raise ConfigError(f"{where}: {name}: unknown TLS version {version!r}")
        setattr(ctx, attribute, TLS_VERSIONS[version])
    try:
        for path in (cert, key):  # ssl opens them itself: a FIFO would hang the start
            read_bounded(path, MAX_PEM_BYTES)
        ctx.load_cert_chain(cert, key)
    except (BadFile, OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load cert_file {cert} with key_file {key}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    ctx.verify_mode = CLIENT_AUTH[auth]
    if ctx.verify_mode != ssl.CERT_NONE:
        try:
            if client_ca:
                ctx.load_verify_locations(
                    cadata=read_bounded(client_ca, MAX_PEM_BYTES).decode("ascii", "replace"))
            else:  # Go verifies against the system's roots then
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        except (BadFile, OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}: cannot load client_ca_file {client_ca}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
    _ciphers(ctx, tls, where)
    return ctx


def _ciphers(ctx: ssl.SSLContext, tls: dict[str, Any], where: str) -> None:
    names = tls.get("cipher_suites", [])
    unknown = [n for n in names if not isinstance(n, str) or n not in CIPHERS]
    if unknown:
        raise ConfigError(f"{where}: unknown cipher {unknown[0]!r}")
    openssl = [CIPHERS[n] for n in names if CIPHERS[n]]
    if openssl:
        ctx.set_ciphers(":".join(openssl))
    if tls.get("prefer_server_cipher_suites", True):
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = tls.get("curve_preferences", [])
    bad = [c for c in curves if not isinstance(c, str) or c not in CURVES]
    if bad:
        raise ConfigError(f"{where}: unknown curve {bad[0]!r}")
    if curves:
        log.warning("%s: curve_preferences is not applied (OpenSSL's defaults are used)", where)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes; remembers outcomes, as the toolkit
    does, so a scrape pays bcrypt (~70 ms at cost 10) once and not every time."""

    def __init__(self, users: dict[str, bytes]) -> None:
        self.users = users
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()  # one bcrypt at a time: it is CPU-bound

    def allows(self, header: str | None) -> bool:
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        try:
            hashed = self.users.get(user.decode("utf-8"))
        except UnicodeDecodeError:  # no configured user has such a name
            hashed = None
        known = hashed is not None
        hashed = hashed if known else FAKE_HASH
        key = hashlib.sha256(b"\0".join((user, hashed, password))).digest()
        with self._cache_lock:
            cached = self._cache.get(key)
        if cached is None:
            with self._bcrypt_lock:
                # Go's bcrypt, like htpasswd, uses the first 72 bytes; Python's refuses more.
                matches = bcrypt.checkpw(password[:72], hashed)
            cached = known and matches
            with self._cache_lock:
                self._cache[key] = cached
                while len(self._cache) > AUTH_CACHE_SIZE:
                    self._cache.popitem(last=False)
        return cached


def _basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) as bytes from an Authorization header, parsed as Go's
    Request.BasicAuth does: whatever bytes the client sent, compared as bytes."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True)
    except ValueError:
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password
