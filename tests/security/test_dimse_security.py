"""DIMSE identity, authorization, data scoping and audit through a real ``pacsd serve``
(SEC-18, R-A12, R-E3, R-E4, MLPS 7, 9), on SQLite and PostgreSQL, with pynetdicom and
DCMTK peers (getscu, findscu, storescp as the C-MOVE destination).

Peers (``[dimse] actors``): STORER (integration, every institution), FINDA (clinician of
institution A, bound to 127.0.0.1), SPOOF (a sysadmin AE that must connect from
10.99.0.1, so the same title from 127.0.0.1 is a spoof). NOBODY is not listed at all.
"""
from __future__ import annotations

import io
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pydicom
import requests
import pytest
from dicomgen import make_dataset, to_part10
from pacsd_server import Server, free_port
from pynetdicom import AE
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet,
                                  StudyRootQueryRetrieveInformationModelMove)
from pydicom.dataset import Dataset
from sechelpers import cli, pg_empty

from pacsd import hookimpl
from pacsd.config import load_settings
from pacsd.services.security import Actor, open_security

PACS = "PACSD"
PASSWORD = "Correct-Horse-9"


ST = {"A1": "1.2.826.0.1.3680043.10.543.11", "B1": "1.2.826.0.1.3680043.10.543.12"}
INST = {"A1": "Hospital A", "B1": "Hospital B"}


def dataset(name: str):
    ds = make_dataset(study=ST[name], series=ST[name] + ".1", sop=ST[name] + ".1.1",
                      InstitutionName=INST[name], PatientID="P1")
    return pydicom.dcmread(io.BytesIO(to_part10(ds)))


def associate(port: int, aet: str, contexts):
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for c in contexts:
        ae.add_requested_context(c)
    assoc = ae.associate("127.0.0.1", port, ae_title=PACS)
    assert assoc.is_established, aet
    return ae, assoc


def c_store(port: int, aet: str, ds) -> int:
    ae, assoc = associate(port, aet, [CTImageStorage])
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()
        ae.shutdown()


def c_find(port: int, aet: str) -> tuple[list[str], int]:
    """(StudyInstanceUIDs matched, final status) of a study-level C-FIND for all."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = ""
    ae, assoc = associate(port, aet, [StudyRootQueryRetrieveInformationModelFind])
    found, final = [], None
    try:
        for status, identifier in assoc.send_c_find(
                ident, StudyRootQueryRetrieveInformationModelFind):
            if status.Status in (0xFF00, 0xFF01):
                found.append(str(identifier.StudyInstanceUID))
            else:
                final = int(status.Status)
    finally:
        assoc.release()
        ae.shutdown()
    return found, final


def c_move(port: int, aet: str, study: str) -> tuple[int, int]:
    """(final status, completed sub-operations) of a study C-MOVE to DEST."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    ae, assoc = associate(port, aet, [StudyRootQueryRetrieveInformationModelMove])
    try:
        last = None
        for status, _ in assoc.send_c_move(ident, "DEST",
                                           StudyRootQueryRetrieveInformationModelMove):
            last = status
    finally:
        assoc.release()
        ae.shutdown()
    return int(last.Status), int(last.get("NumberOfCompletedSuboperations", 0))


def getscu(port: int, aet: str, study: str, out: Path) -> list[Path]:
    """DCMTK getscu (Study Root) for one study; the files it received."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(["/usr/bin/getscu", "-aet", aet, "-aec", PACS, "-S", "-od", str(out),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                    "127.0.0.1", str(port)], capture_output=True, timeout=60)
    return sorted(out.iterdir())


class StoreSCP:
    """DCMTK storescp: the C-MOVE destination."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True)
        self.directory, self.port = directory, free_port()
        self.proc = subprocess.Popen(["/usr/bin/storescp", "-aet", "DEST", "+xa", "-od",
                                      str(directory), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("storescp did not start")
                time.sleep(0.05)

    def files(self) -> list[Path]:
        return sorted(self.directory.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.db'}"
    return pg_empty(request.getfixturevalue("pg_server_url"))


def test_SEC18_RA12_RE3_RE4_dimse_identity_scope_and_audit(tmp_path, index_url):
    for tool in ("getscu", "storescp"):
        if not Path(f"/usr/bin/{tool}").exists():
            pytest.skip(f"DCMTK {tool} is not installed")
    dest = StoreSCP(tmp_path / "dest")
    data = tmp_path / "data"
    data.mkdir()
    conf = tmp_path / "pacsd.toml"
    conf.write_text(f'''
[index]
url = "{index_url}"
[security]
enabled = true
institution_map = {{ "Hospital A" = "A", "Hospital B" = "B" }}
[dimse]
peers = {{ DEST = "127.0.0.1:{dest.port}" }}
[dimse.actors.STORER]
roles = ["integration"]
[dimse.actors.FINDA]
roles = ["clinician"]
institutions = ["A"]
source_ips = ["127.0.0.1"]
[dimse.actors.STOREA]
roles = ["integration"]
institutions = ["A"]
[dimse.actors.SPOOF]
roles = ["sysadmin"]
source_ips = ["10.99.0.1"]
''')
    # A user of institution A, made with the command line (MLPS 5: no default account).
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    common = ["--config", str(conf), "--data-dir", str(data)]
    made = cli("user", "add", "dr-a", "--role", "clinician", "--institution", "A",
               "--password-file", str(pw), *common)
    assert made.returncode == 0, made.stderr
    srv = Server(str(data), "--config", str(conf), "--ae-title", PACS, dicom_port=None)
    try:
        port = srv.dicom_port
        # C-STORE: only a peer whose role gives `write`, from its bound address.
        assert c_store(port, "STORER", dataset("A1")) == 0x0000
        assert c_store(port, "STORER", dataset("B1")) == 0x0000
        assert c_store(port, "FINDA", dataset("A1")) == 0x0124   # clinician: read only
        assert c_store(port, "SPOOF", dataset("A1")) == 0x0124   # right AE, wrong address
        assert c_store(port, "NOBODY", dataset("A1")) == 0x0124  # unknown AE
        # C-FIND: the institution scope applies; unknown / spoofed peers are refused.
        found, final = c_find(port, "FINDA")
        assert found == [ST["A1"]] and final == 0x0000
        found, _ = c_find(port, "STORER")
        assert sorted(found) == sorted(ST.values())
        assert c_find(port, "NOBODY") == ([], 0x0124)
        assert c_find(port, "SPOOF") == ([], 0x0124)
        # C-GET with DCMTK getscu: B1 is outside FINDA's scope, so nothing comes back.
        assert getscu(port, "FINDA", ST["B1"], tmp_path / "get-b") == []
        got = getscu(port, "FINDA", ST["A1"], tmp_path / "get-a")
        assert len(got) == 1
        # C-MOVE: same scope; the destination receives only what is in scope.
        assert c_move(port, "FINDA", ST["B1"]) == (0x0000, 0)
        assert dest.files() == []
        assert c_move(port, "FINDA", ST["A1"]) == (0x0000, 1)
        assert len(dest.files()) == 1
        assert c_move(port, "NOBODY", ST["A1"])[0] == 0x0124
        # The same scope over real HTTP (QIDO-RS, WADO-RS) for the user of A.
        r = requests.post(f"{srv.url}/api/v1/auth/login",
                          json={"username": "dr-a", "password": PASSWORD}, timeout=30)
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        r = requests.get(f"{srv.url}/dicom-web/studies", timeout=30,
                         headers={**auth, "Accept": "application/dicom+json"})
        assert [i["0020000D"]["Value"][0] for i in r.json()] == [ST["A1"]]
        r = requests.get(f"{srv.url}/dicom-web/studies/{ST['B1']}/metadata", timeout=30,
                         headers={**auth, "Accept": "application/dicom+json"})
        assert r.status_code == 404
        # R-A12: a writer of institution A stores into A's study, not into B's (existing)
        # nor a new study whose data makes it B's: 0x0124 both, nothing written.
        again = dataset("A1")
        again.SOPInstanceUID = ST["A1"] + ".1.2"
        assert c_store(port, "STOREA", again) == 0x0000
        into_b = dataset("B1")
        into_b.SOPInstanceUID = ST["B1"] + ".1.2"
        assert c_store(port, "STOREA", into_b) == 0x0124
        new_b = dataset("B1")
        new_b.StudyInstanceUID, new_b.SeriesInstanceUID = ST["B1"] + "9", ST["B1"] + "9.1"
        new_b.SOPInstanceUID = ST["B1"] + "9.1.1"
        assert c_store(port, "STOREA", new_b) == 0x0124
    finally:
        srv.stop()
        dest.stop()

    # MLPS 8 with the command line: label A1 VIP; dr-a (no clearance) loses it.
    labelled = cli("study", "label", ST["A1"], "--set", "VIP", *common)
    assert labelled.returncode == 0 and labelled.stdout.strip() == "VIP", labelled.stderr
    listed = cli("user", "list", *common)
    assert "institutions A" in listed.stdout
    srv = Server(str(data), "--config", str(conf), "--ae-title", PACS, dicom_port=None)
    try:
        r = requests.post(f"{srv.url}/api/v1/auth/login",
                          json={"username": "dr-a", "password": PASSWORD}, timeout=30)
        auth = {"Authorization": f"Bearer {r.json()['token']}",
                "Accept": "application/dicom+json"}
        assert requests.get(f"{srv.url}/dicom-web/studies", headers=auth,
                            timeout=30).json() == []
        assert c_find(srv.dicom_port, "FINDA") == ([], 0x0000)  # FINDA: no clearance
        assert len(c_find(srv.dicom_port, "STORER")[0]) == 1     # nor STORER (B1 only)
    finally:
        srv.stop()

    # The audit trail (flushed at shutdown): who, which AE and address, which study,
    # where stored; the denials too.
    settings = load_settings(str(conf), server__data_dir=str(data))
    security, catalogue = open_security(settings)
    try:
        events = security.audit.query(limit=1000)
        assert security.audit.verify().ok
    finally:
        catalogue.close()

    def find(**match):
        return [e for e in events if all(e[k] == v for k, v in match.items())]

    stored = find(event_type="instances-stored", outcome="success", actor="ae:STORER")
    assert sorted(e["study_uid"] for e in stored) == sorted(ST.values())
    for e in stored:
        assert (e["actor"], e["device"], e["source_ip"]) == ("ae:STORER", "STORER",
                                                              "127.0.0.1")
        assert e["object_count"] == 1 and e["location"]
        assert orjson.loads(e["detail"])["service"] == "C-STORE"
    assert [e["study_uid"] for e in find(event_type="instances-stored", outcome="success",
                                         actor="ae:STOREA")] == [ST["A1"]]
    out_of_scope = find(event_type="permission-denied", actor="ae:STOREA")
    assert sorted(e["study_uid"] for e in out_of_scope) == [ST["B1"], ST["B1"] + "9"]
    assert {orjson.loads(e["detail"])["reason"] for e in out_of_scope} == {
        "outside data scope"}
    denied = find(event_type="permission-denied")
    assert {(e["device"], orjson.loads(e["detail"])["method"]) for e in denied} >= {
        ("FINDA", "C-STORE"), ("SPOOF", "C-STORE"), ("NOBODY", "C-STORE"),
        ("NOBODY", "C-FIND"), ("SPOOF", "C-FIND"), ("NOBODY", "C-MOVE")}
    assert {e["actor"] for e in denied if e["device"] == "NOBODY"} == {"anonymous"}
    queries = find(event_type="query", actor="ae:FINDA")
    assert [orjson.loads(e["detail"])["results"] for e in queries] == [1, 0]
    assert find(event_type="labels-changed", study_uid=ST["A1"], actor="local")
    reads = find(event_type="study-read", actor="ae:FINDA")
    assert [(orjson.loads(e["detail"])["service"], e["study_uid"], e["object_count"])
            for e in reads] == [("C-GET", ST["A1"], 1), ("C-MOVE", ST["A1"], 1)]
    assert orjson.loads(reads[1]["detail"])["destination"] == "DEST"
    # No patient data in the trail (SEC-23).
    assert "P1" not in orjson.dumps(events).decode().replace(ST["A1"], "")


class DeviceRegistry:
    """An actor_from_association plugin: a device registry naming one modality."""

    @hookimpl
    def actor_from_association(self, calling_ae, address, called_ae):
        if calling_ae == "REG-CT" and address == "10.0.0.7" and called_ae == PACS:
            return Actor(id="device:ct-7", name="REG-CT", roles=frozenset({"integration"}),
                         institutions=frozenset({"B"}))
        return None


def test_SEC18_actor_from_association_plugin_first_then_dimse_actors(tmp_path, clock):
    from sechelpers import make_service, make_settings
    settings = make_settings(tmp_path)
    settings.dimse.actors = {"CT1": {"source_ips": ["10.0.0.0/24"], "roles": ["integration"],
                                     "institutions": ["A"], "clearances": ["VIP"]},
                             "REG-CT": {"roles": ["sysadmin"]}}
    svc, cat = make_service(settings, clock)
    try:
        svc.plugins.register(DeviceRegistry(), name="registry")
        plugin = svc.actor_from_association("REG-CT", "10.0.0.7", PACS)
        assert plugin.id == "device:ct-7" and plugin.institutions == {"B"}
        # Not the plugin's (other address): the [dimse] actors entry applies.
        table = svc.actor_from_association("REG-CT", "10.0.0.8", PACS)
        assert table.id == "ae:REG-CT" and table.roles == {"sysadmin"}
        ct1 = svc.actor_from_association("CT1", "10.0.0.9", PACS)
        assert (ct1.institutions, ct1.clearances) == ({"A"}, {"VIP"})
        assert svc.actor_from_association("CT1", "192.168.1.9", PACS) is None  # spoof
        assert svc.actor_from_association("OTHER", "10.0.0.9", PACS) is None
    finally:
        cat.close()
