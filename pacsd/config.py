"""L1: settings, loaded from one TOML file (conf/pacsd.example.toml lists every key).

Every setting has a default here and in ``conf/pacsd.example.toml`` (a test keeps the
two in step, and ``docs/settings.md`` describes each). Secrets may be given indirectly as
``"$env:NAME"`` or ``"$file:/path"`` so they stay out of the file (ARCHITECTURE
conventions). CLI flags override the common ones.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import PacsdError


class ConfigError(PacsdError):
    """The configuration is invalid."""


@dataclass
class ServerSettings:
    #: HTTP listen address HOST:PORT. Loopback by default (security is default: SEC-20).
    http: str = "127.0.0.1:8042"
    #: DICOM (DIMSE) port; 0 disables the DIMSE listener.
    dicom_port: int = 11112
    #: This archive's AE title.
    ae_title: str = "PACSD"
    #: Directory for the embedded index, the local blob store and staging files.
    data_dir: str = "./pacsd-data"
    #: Public base URL (e.g. https://pacs.example.org); empty = derived from each request.
    public_url: str = ""
    #: Seconds graceful shutdown waits for in-flight requests (stores finish first).
    shutdown_timeout_s: float = 30.0
    #: Worker threads for blocking work (file IO, parsing, index).
    worker_threads: int = 16
    #: Directory of the built web viewer served at /viewer; empty = viewer-web/dist of
    #: the source checkout (R-D1, docs/viewer.md).
    viewer_dir: str = ""


@dataclass
class StorageSettings:
    #: Blob store URL: a path / file:// URL (default <data_dir>/blobs) or s3://bucket/prefix.
    url: str = ""
    #: Options for S3-compatible stores.
    endpoint_url: str = ""
    key: str = ""
    secret: str = ""
    region: str = ""
    #: Several copies that verify each other (R-A6): a list of tables, each with ``url``
    #: and optionally ``endpoint_url``, ``key``, ``secret``, ``region``. When non-empty it
    #: replaces ``url``; a store is acknowledged only once every copy holds it, hash-checked.
    copies: list[dict[str, Any]] = field(default_factory=list)

    #: Keys of one ``copies`` entry.
    COPY_KEYS = ("url", "endpoint_url", "key", "secret", "region")

    def copy_specs(self, default_url: str) -> list[dict[str, str]]:
        """The copies to open: ``copies`` if given, else one copy at ``url`` (or
        ``default_url``). An ``s3://`` copy without its own ``endpoint_url``/``key``/
        ``secret``/``region`` takes the top-level value; ``$env:``/``$file:`` resolved."""
        entries = self.copies or [{"url": self.url or default_url}]
        specs = []
        for n, entry in enumerate(entries, 1):
            if not isinstance(entry, dict):
                raise ConfigError(f"[storage] copies: entry {n} must be a table")
            unknown = set(entry) - set(self.COPY_KEYS)
            if unknown:
                raise ConfigError(f"unknown setting [storage] copies entry {n}: "
                                  + ", ".join(sorted(unknown)))
            spec = {k: _resolve_secret(v) for k, v in entry.items()}
            if any(not isinstance(v, str) for v in spec.values()):
                raise ConfigError(f"[storage] copies entry {n}: values must be strings")
            if not spec.get("url"):
                raise ConfigError(f"[storage] copies entry {n} needs a url")
            if spec["url"].split("://", 1)[0].lower() in ("s3", "s3a"):
                for k in self.COPY_KEYS[1:]:
                    if not spec.get(k) and getattr(self, k):
                        spec[k] = getattr(self, k)
            specs.append({k: v for k, v in spec.items() if v})
        return specs


@dataclass
class IndexSettings:
    #: SQLAlchemy URL: default sqlite:///<data_dir>/index.db; postgresql://user@host/db for scale-out.
    url: str = ""
    #: Seconds a write waits for a locked database before answering 503 / A700 (FT-10).
    busy_timeout_s: float = 10.0


@dataclass
class DicomwebSettings:
    #: URL path root of the DICOMweb services.
    root: str = "/dicom-web"
    #: Largest STOW-RS request body in bytes (413 above; checked while streaming).
    max_request_bytes: int = 8 * 1024**3
    #: Largest single instance in bytes.
    max_instance_bytes: int = 4 * 1024**3
    #: Most parts in one STOW-RS request.
    max_parts: int = 10000
    #: Instances processed concurrently within one STOW-RS request.
    stow_concurrency: int = 4
    #: QIDO-RS: the most results one response returns (larger limits are clamped).
    qido_max_limit: int = 1000
    #: Transfer syntax of WADO-RS application/dicom when the client names none:
    #: PS3.18 says Explicit VR Little Endian; "*" returns objects as stored.
    default_transfer_syntax: str = "1.2.840.10008.1.2.1"
    #: Origins allowed to call from a browser (CORS). Empty: no cross-origin access.
    cors_allowed_origins: list[str] = field(default_factory=list)
    #: Largest image (rows x columns x samples x frames) /rendered, /thumbnail and
    #: frame decoding will touch (BI-11, BI-13).
    render_max_pixels: int = 2**28
    #: Most frames one /frames request may list (BI-31).
    max_frames_per_request: int = 1000


@dataclass
class DimseSettings:
    """DIMSE (DICOM network) services; the listener itself is ``[server] dicom_port`` and
    ``ae_title`` (0 port = no DIMSE). See docs/dimse-conformance.md."""

    #: Known remote AEs, AE title -> "host:port": the C-MOVE destinations (SEC-18: any
    #: other Move Destination answers 0xA801).
    peers: dict[str, str] = field(default_factory=dict)
    #: Calling AE titles allowed to associate; empty = any (the embedded loopback
    #: default). Others get A-ASSOCIATE-RJ permanent, source 1, reason 3 (SEC-18).
    allowed_calling_aets: list[str] = field(default_factory=list)
    #: Source IP addresses or networks (CIDR) allowed to connect; empty = any.
    allowed_source_ips: list[str] = field(default_factory=list)
    #: Simultaneous incoming associations; one more is rejected transient,
    #: local-limit-exceeded (LD-4).
    max_associations: int = 16
    #: Seconds to wait for association negotiation (A-ASSOCIATE, A-RELEASE) messages.
    acse_timeout_s: float = 30.0
    #: Seconds to wait for a DIMSE message (e.g. a C-STORE response during C-MOVE).
    dimse_timeout_s: float = 30.0
    #: Seconds an association may stay silent, and the most one PDU may take to arrive
    #: (BI-34: slow or stalled peers are aborted).
    network_timeout_s: float = 60.0
    #: Largest PDU pacsd receives, in bytes (0 = unlimited). pynetdicom's default.
    max_pdu: int = 16382

    def peer_addresses(self) -> dict[str, tuple[str, int]]:
        """``peers`` parsed: AE title -> (host, port); ConfigError names a bad entry."""
        out = {}
        for aet, address in self.peers.items():
            aet_ok = isinstance(aet, str) and 0 < len(aet.strip()) <= 16 and aet.isascii() \
                and "\\" not in aet
            host, _, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
            if not aet_ok or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(f"[dimse] peers: entry {aet!r} must be AE = \"host:port\" "
                                  "(AE title up to 16 ASCII characters)")
            out[aet.strip()] = (host.strip("[]"), int(port))
        return out

    def add_peer(self, spec: str) -> None:
        """``AET=host:port`` (the ``--peer`` command-line flag)."""
        aet, sep, address = spec.partition("=")
        if not sep:
            raise ConfigError("--peer must be AET=host:port")
        self.peers[aet.strip()] = address.strip()
        self.peer_addresses()

    def source_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``allowed_source_ips`` parsed (addresses or CIDR networks)."""
        try:
            return [ipaddress.ip_network(str(n).strip(), strict=False)
                    for n in self.allowed_source_ips]
        except ValueError:
            raise ConfigError("[dimse] allowed_source_ips: each entry must be an IP "
                              "address or network (CIDR)") from None

    def check(self) -> None:
        self.peer_addresses()
        self.source_networks()
        if self.max_associations < 1:
            raise ConfigError("[dimse] max_associations must be at least 1")
        if self.max_pdu < 0 or self.max_pdu > 0xFFFFFFFF:
            raise ConfigError("[dimse] max_pdu must be 0 (unlimited) or a PDU size in bytes")
        for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[dimse] {name} must be positive")


@dataclass
class SecuritySettings:
    """Authentication, authorization and audit (docs/security.md; R-E1, MLPS 1-2)."""

    #: Require a Bearer token (session or API token) on every route but health and
    #: login. Off = the embedded loopback-only mode: requests act as the local operator.
    enabled: bool = False
    #: Consecutive failed passwords that lock an account (MLPS 2).
    lockout_threshold: int = 5
    #: Seconds an account stays locked.
    lockout_s: float = 900.0
    #: Seconds of inactivity that end a session (MLPS 2).
    session_idle_timeout_s: float = 900.0
    #: Seconds after login a session ends however active it is.
    session_absolute_timeout_s: float = 28800.0
    #: Failed logins / bad tokens from one source IP within ``login_rate_window_s``
    #: after which it gets 429 (SEC-8).
    login_rate_limit: int = 10
    login_rate_window_s: float = 300.0
    #: Shortest password accepted (with 3 of 4 character classes, not the user name).
    password_min_length: int = 8
    #: Longest lifetime of an API token, in days.
    token_max_days: int = 365

    def check(self) -> None:
        for name in ("lockout_threshold", "lockout_s", "session_idle_timeout_s",
                     "session_absolute_timeout_s", "login_rate_limit",
                     "login_rate_window_s", "token_max_days"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"[security] {name} must be positive")
        if self.password_min_length < 8:
            raise ConfigError("[security] password_min_length must be at least 8")


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
    dimse: DimseSettings = field(default_factory=DimseSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)

    # --- derived values -------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser().resolve()

    @property
    def storage_url(self) -> str:
        return self.storage.url or str(self.data_path / "blobs")

    @property
    def index_url(self) -> str:
        return self.index.url or f"sqlite:///{self.data_path / 'index.db'}"

    @property
    def http_host_port(self) -> tuple[str, int]:
        host, _, port = self.server.http.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("server.http must be HOST:PORT")
        return host.strip("[]"), int(port)

    def http_is_loopback(self) -> bool:
        host, _ = self.http_host_port
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _resolve_secret(value: Any) -> Any:
    """``$env:NAME`` / ``$file:/path`` indirection for secrets."""
    if isinstance(value, str) and value.startswith("$env:"):
        return os.environ.get(value[5:], "")
    if isinstance(value, str) and value.startswith("$file:"):
        return Path(value[6:]).read_text().strip()
    return value


def _fill(obj: Any, data: dict[str, Any], section: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"unknown setting [{section}] {key}")
        current = getattr(obj, key)
        value = _resolve_secret(value)
        if isinstance(current, bool) != isinstance(value, bool) or (
            isinstance(current, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(current, str) and not isinstance(value, str)) or (
            isinstance(current, list) and not isinstance(value, list)
        ) or (isinstance(current, dict) and not isinstance(value, dict)):
            raise ConfigError(f"setting [{section}] {key} has the wrong type")
        setattr(obj, key, type(current)(value) if isinstance(current, (int, float)) and not isinstance(current, bool) else value)


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), then apply ``section__key=value`` overrides."""
    settings = Settings()
    if path:
        with open(path, "rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"cannot parse {path}: {exc}") from None
        for section, values in data.items():
            if section == "plugins":
                settings.plugins = dict(values)
                continue
            target = getattr(settings, section, None)
            if target is None or not dataclasses.is_dataclass(target) or not isinstance(values, dict):
                raise ConfigError(f"unknown settings section [{section}]")
            _fill(target, values, section)
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        _fill(getattr(settings, section), {name: value}, section)
    settings.dimse.check()
    settings.security.check()
    return settings


def settings_as_toml_defaults() -> dict[str, dict[str, Any]]:
    """The default of every setting, by section (the example file is checked against it)."""
    s = Settings()
    return {
        name: dataclasses.asdict(getattr(s, name))
        for name in ("server", "storage", "index", "dicomweb", "dimse", "security")
    }
