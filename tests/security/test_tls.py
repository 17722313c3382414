"""TLS on the listeners (MLPS 3, PS3.15 B.1; pacsd/tls.py): a real ``pacsd serve`` with a
certificate from a test CA made here serves HTTPS (plain HTTP on that port fails), and a
DICOM-over-TLS listener that requires client certificates accepts C-ECHO and C-STORE from
a modality with one and refuses the handshake without one. Bad configurations stop the
start-up with a clear message."""
from __future__ import annotations

import io
import ssl
import subprocess
import sys

import pydicom
import pytest
import requests
from dicomgen import make_dataset, to_part10
from pacsd_server import Server, free_port
from pki import make_pki
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelGet,
                                  Verification)

SINGLE = {"Accept": "application/dicom; transfer-syntax=*"}


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def _config(tmp_path, pki, tls_port: int) -> str:
    path = tmp_path / "pacsd.toml"
    path.write_text(f"""
[server]
tls_cert = "{pki['cert']}"
tls_key = "{pki['key']}"
dicom_tls_port = {tls_port}
tls_client_ca = "{pki['ca']}"
""")
    return str(path)


def _modality(pki, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca"])
    if with_cert:
        ctx.load_cert_chain(pki["client_cert"], pki["client_key"])
    return ctx


def test_MLPS3_https_and_dicom_tls_with_client_certificates(tmp_path, pki):
    tls_port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    srv = Server(str(data_dir), "--config", _config(tmp_path, pki, tls_port),
                 https_ca=pki["ca"])
    try:
        assert srv.url.startswith("https://")
        assert requests.get(srv.url + "/api/v1/health", verify=pki["ca"],
                            timeout=10).status_code == 200
        with pytest.raises(requests.ConnectionError):  # no plain HTTP on the TLS port
            requests.get(srv.url.replace("https://", "http://") + "/api/v1/health",
                         timeout=10)

        ae = AE(ae_title="CT01")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        ae.acse_timeout = ae.network_timeout = 20
        assoc = ae.associate("127.0.0.1", tls_port, ae_title="PACSD",
                             tls_args=(_modality(pki, True), "127.0.0.1"))
        assert assoc.is_established
        try:
            assert assoc.send_c_echo().Status == 0x0000
            ds = pydicom.dcmread(io.BytesIO(to_part10(make_dataset(seed=3, Modality="CT"))))
            assert assoc.send_c_store(ds).Status == 0x0000
        finally:
            assoc.release()
        r = requests.get(f"{srv.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/"
                         f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                         headers=SINGLE, verify=pki["ca"], timeout=30)
        assert r.status_code == 200 and ds.PixelData in r.content

        # C-GET over TLS: the pre-framed sub-operation arrives intact (pdata.py).
        received = []

        def on_store(event):
            received.append(event.request.DataSet.getvalue())
            return 0x0000
        getter = AE(ae_title="CT01")
        getter.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        getter.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
        getter.acse_timeout = getter.network_timeout = getter.dimse_timeout = 20
        assoc = getter.associate("127.0.0.1", tls_port, ae_title="PACSD",
                                 tls_args=(_modality(pki, True), "127.0.0.1"),
                                 ext_neg=[build_role(CTImageStorage, scp_role=True)],
                                 evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        try:
            query = pydicom.Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ds.StudyInstanceUID
            statuses = [s.Status for s, _ in assoc.send_c_get(
                query, StudyRootQueryRetrieveInformationModelGet)]
        finally:
            assoc.release()
        assert statuses[-1] == 0x0000 and len(received) == 1
        assert received[0] == r.content[-len(received[0]):]  # the stored data set bytes

        # Mutual TLS: a peer without a client certificate never gets an association.
        refused = ae.associate("127.0.0.1", tls_port, ae_title="PACSD",
                               tls_args=(_modality(pki, False), "127.0.0.1"))
        assert not refused.is_established
        # A plain (non-TLS) association to the TLS port fails as well.
        plain = ae.associate("127.0.0.1", tls_port, ae_title="PACSD")
        assert not plain.is_established
    finally:
        srv.stop()


@pytest.mark.parametrize("server_toml, message", [
    ('tls_cert = "{cert}"', "tls_cert and tls_key go together"),
    ("dicom_tls_port = 2762", "dicom_tls_port needs tls_cert and tls_key"),
    ('tls_cert = "{cert}"\ntls_key = "/nonexistent/key.pem"', "cannot read"),
])
def test_MLPS3_bad_tls_configuration_stops_the_start_up(tmp_path, pki, server_toml, message):
    config = tmp_path / "pacsd.toml"
    config.write_text("[server]\n" + server_toml.format(cert=pki["cert"]) + "\n")
    run = subprocess.run([sys.executable, "-m", "pacsd.cli", "serve", "--config", str(config),
                          "--data-dir", str(tmp_path / "d"), "--http",
                          f"127.0.0.1:{free_port()}", "--dicom-port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr
