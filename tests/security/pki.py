"""A throw-away PKI for TLS tests (MLPS 3, 13): a CA, a server certificate for 127.0.0.1
and a client certificate, as PEM files (used by test_tls.py and test_audit_syslog.py)."""
from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool = False,
          ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write(path, cert=None, key=None) -> str:
    data = b""
    if cert is not None:
        data += cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    path.write_bytes(data)
    return str(path)


def make_pki(tmp_path) -> dict[str, str]:
    """Paths of ``ca``, ``cert`` / ``key`` (server, 127.0.0.1) and ``client_cert`` /
    ``client_key`` (CN CT01)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("pacsd test CA", ca_key, _name("pacsd test CA"), ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("pacsd", srv_key, ca.subject, ca_key, ip="127.0.0.1")
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("CT01", cli_key, ca.subject, ca_key)
    return {"ca": _write(tmp_path / "ca.pem", ca),
            "cert": _write(tmp_path / "server.pem", srv),
            "key": _write(tmp_path / "server.key", key=srv_key),
            "client_cert": _write(tmp_path / "client.pem", cli),
            "client_key": _write(tmp_path / "client.key", key=cli_key)}
