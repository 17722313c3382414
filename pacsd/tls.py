"""L1: TLS for the HTTP and DICOM listeners (MLPS 3 secure transport; DICOM PS3.15 B.1
"Basic TLS Secure Transport Connection Profile").

``[server] tls_cert`` / ``tls_key`` (PEM files) turn HTTP into HTTPS on ``[server] http``
and allow a second DICOM listener with TLS on ``[server] dicom_tls_port`` (2762 is the
port registered for DICOM over TLS). ``tls_client_ca`` makes that DICOM listener require
a client certificate issued by the given CA (mutual TLS: the modality is identified by its
certificate as well as its AE title). TLS 1.2 or newer only; Python's default secure
cipher selection.
"""
from __future__ import annotations

import os
import ssl

from .config import ConfigError, Settings


def check(settings: Settings) -> None:
    """Refuse an incomplete or unreadable TLS configuration before anything listens."""
    s = settings.server
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ConfigError("[server] tls_cert and tls_key go together")
    if s.dicom_tls_port and not s.tls_cert:
        raise ConfigError("[server] dicom_tls_port needs tls_cert and tls_key")
    if s.tls_client_ca and not s.dicom_tls_port:
        raise ConfigError("[server] tls_client_ca applies to dicom_tls_port, which is 0")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(s, name)
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"[server] {name}: cannot read {path}")


def server_context(settings: Settings, *, client_ca: bool = False) -> ssl.SSLContext | None:
    """The server-side SSL context of the configured certificate, or None without one.
    ``client_ca``: require client certificates issued by ``[server] tls_client_ca``."""
    s = settings.server
    if not s.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
        if client_ca and s.tls_client_ca:
            ctx.load_verify_locations(cafile=s.tls_client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[server] TLS certificate or key not usable: {exc}") from None
    return ctx
