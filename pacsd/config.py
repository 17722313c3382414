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


@dataclass
class StorageSettings:
    #: Blob store URL: a path / file:// URL (default <data_dir>/blobs) or s3://bucket/prefix.
    url: str = ""
    #: Options for S3-compatible stores.
    endpoint_url: str = ""
    key: str = ""
    secret: str = ""
    region: str = ""


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
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)
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
        ):
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
    return settings


def settings_as_toml_defaults() -> dict[str, dict[str, Any]]:
    """The default of every setting, by section (the example file is checked against it)."""
    s = Settings()
    return {
        name: dataclasses.asdict(getattr(s, name))
        for name in ("server", "storage", "index", "dicomweb")
    }
