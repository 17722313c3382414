"""``pacsd reconcile`` (R-A10): compare the archive with a hospital PACS (a real second
``pacsd serve`` answering C-FIND / C-GET / C-STORE) or with a manifest; list what is
missing or different; ``--fetch`` re-requests what is missing here, ``--send`` re-sends
what the peer lacks, both audited."""
from __future__ import annotations

import csv

import orjson
import requests
import sqlalchemy as sa
from dicomgen import make_dataset, multipart, to_part10
from pacsd_server import Server, free_port

from pacsd import cli
from pacsd.index import Catalogue
from pacsd.index.security_schema import audit_events


def _study(seed: int, n: int, patient: str) -> list:
    first = make_dataset(seed=seed, StudyDate="20240105", PatientID=patient)
    return [first] + [make_dataset(study=first.StudyInstanceUID,
                                   series=first.SeriesInstanceUID, seed=seed * 10 + k,
                                   StudyDate="20240105", PatientID=patient)
                      for k in range(1, n)]


def _stow(srv: Server, datasets: list) -> None:
    body, ctype = multipart([to_part10(d) for d in datasets])
    r = requests.post(srv.url + "/dicom-web/studies", data=body,
                      headers={"Content-Type": ctype}, timeout=30)
    assert r.status_code == 200, r.text


def _import(tmp_path, here, datasets: list) -> None:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for ds in datasets:
        (src / f"{ds.SOPInstanceUID}.dcm").write_bytes(to_part10(ds))
    assert cli.main(["import", str(src), "--data-dir", str(here), "--no-forward"]) == 0


class Scene:
    """equal: on both sides; only_peer: missing here; only_here: missing at the peer;
    mixed: d[0] on both, d[1], d[2] only at the peer, d[3] only here (counts 3 vs 2)."""

    def __init__(self, tmp_path) -> None:
        self.equal = _study(1, 2, "REC-1")
        self.only_peer = _study(2, 2, "REC-2")
        self.only_here = _study(3, 1, "REC-3")
        self.mixed = _study(4, 4, "REC-4")
        d = tmp_path / "hospital"
        d.mkdir()
        self.peer = Server(str(d), "--ae-title", "HOSPITAL", dicom_port=None)
        _stow(self.peer, self.equal + self.only_peer + self.mixed[:3])
        self.here = tmp_path / "here"
        _import(tmp_path, self.here, self.equal + self.only_here + [self.mixed[0],
                                                                   self.mixed[3]])
        self.args = ["reconcile", "--peer", f"HOSPITAL=127.0.0.1:{self.peer.dicom_port}",
                     "--data-dir", str(self.here)]


def _uid(datasets) -> str:
    return datasets[0].StudyInstanceUID


def _sops(datasets) -> list[str]:
    return sorted(d.SOPInstanceUID for d in datasets)


def test_R_A10_reconcile_with_a_pacs_names_exactly_the_differences(tmp_path, capsys):
    s = Scene(tmp_path)
    try:
        report_file = tmp_path / "report.json"
        assert cli.main(s.args + ["--json", str(report_file)]) == 1
        out = capsys.readouterr().out
        report = orjson.loads(report_file.read_bytes())
        by_study = {x["study"]: x for x in report["studies"]}
        assert set(by_study) == {_uid(s.equal), _uid(s.only_peer), _uid(s.only_here),
                                 _uid(s.mixed)}
        assert by_study[_uid(s.equal)]["status"] == "equal"
        assert by_study[_uid(s.only_peer)] == {
            "study": _uid(s.only_peer), "status": "missing-here", "here": None, "there": 2,
            "missing_here": _sops(s.only_peer), "missing_there": [], "different_hash": []}
        assert by_study[_uid(s.only_here)]["status"] == "missing-at-peer"
        assert by_study[_uid(s.only_here)]["missing_there"] == _sops(s.only_here)
        mixed = by_study[_uid(s.mixed)]
        assert mixed["status"] == "different"
        assert (mixed["here"], mixed["there"]) == (2, 3)
        assert mixed["missing_here"] == _sops(s.mixed[1:3])
        assert mixed["missing_there"] == _sops(s.mixed[3:])
        assert report["summary"]["equal"] == 1 and report["summary"]["studies"] == 4
        # The table on stdout names the differing studies and UIDs, not the equal one.
        assert f"missing-here" in out and _uid(s.only_peer) in out
        assert f"missing at peer: {s.mixed[3].SOPInstanceUID}" in out
        assert _uid(s.equal) not in out
        # A filter: one study only, equal -> exit status 0.
        assert cli.main(s.args + ["--study", _uid(s.equal)]) == 0
        assert "equal: 1" in capsys.readouterr().out

        # Remedies: fetch what is missing here, send what the peer lacks.
        assert cli.main(s.args + ["--fetch", "--send"]) == 1
        out = capsys.readouterr().out
        assert f"fetched {_uid(s.only_peer)}: 2 sent by the peer, 2 instances stored" in out
        # only the two missing instances were requested (IMAGE level), not the whole study
        assert f"fetched {_uid(s.mixed)}: 2 sent by the peer, 2 instances stored" in out
        assert f"sent {_uid(s.only_here)}: 1 instances sent" in out
        assert f"sent {_uid(s.mixed)}: 1 instances sent" in out
        # A second reconcile finds both sides equal, even instance by instance.
        assert cli.main(s.args + ["--deep"]) == 0, capsys.readouterr().out
        assert "equal: 4" in capsys.readouterr().out
        cat = Catalogue(f"sqlite:///{s.here / 'index.db'}")
        try:
            with cat.engine.connect() as conn:
                ev = conn.execute(sa.select(audit_events).where(
                    audit_events.c.event_type == "reconcile")).all()
        finally:
            cat.close()
        actions = sorted((orjson.loads(e.detail)["action"], e.study_uid or "") for e in ev
                         if orjson.loads(e.detail)["action"] != "compare")
        assert actions == sorted([("fetch", _uid(s.only_peer)), ("fetch", _uid(s.mixed)),
                                  ("send", _uid(s.only_here)), ("send", _uid(s.mixed))])
        assert all(e.actor == "local" and e.device == "pacsd reconcile" for e in ev)
        assert sum(1 for e in ev if orjson.loads(e.detail)["action"] == "compare") == 4
    finally:
        s.peer.stop()


def test_R_A10_deep_compare_finds_a_swap_with_equal_counts(tmp_path, capsys):
    """Same instance count on both sides, different instances: only --deep sees it."""
    d = tmp_path / "hospital"
    d.mkdir()
    peer = Server(str(d), "--ae-title", "HOSPITAL", dicom_port=None)
    try:
        study = _study(5, 3, "REC-5")
        _stow(peer, study[:2])
        here = tmp_path / "here"
        _import(tmp_path, here, [study[0], study[2]])
        args = ["reconcile", "--peer", f"HOSPITAL=127.0.0.1:{peer.dicom_port}",
                "--data-dir", str(here)]
        assert cli.main(args) == 0  # counts 2 == 2
        capsys.readouterr()
        assert cli.main(args + ["--deep"]) == 1
        out = capsys.readouterr().out
        assert f"missing here: {study[1].SOPInstanceUID}" in out
        assert f"missing at peer: {study[2].SOPInstanceUID}" in out
    finally:
        peer.stop()


def test_R_A10_unknown_or_unreachable_peer_is_exit_status_2(tmp_path, capsys):
    assert cli.main(["reconcile", "--peer", "NOPE", "--data-dir", str(tmp_path)]) == 2
    assert "unknown peer" in capsys.readouterr().err
    assert cli.main(["reconcile", "--peer", f"GONE=127.0.0.1:{free_port()}",
                     "--data-dir", str(tmp_path)]) == 2
    assert "cannot associate" in capsys.readouterr().err
    assert cli.main(["reconcile", "--data-dir", str(tmp_path)]) == 2


def test_R_A10_manifest_mode_export_manifest_and_plain_csv(tmp_path, capsys):
    here = tmp_path / "here"
    a, b = _study(6, 3, "REC-6"), _study(7, 1, "REC-7")
    _import(tmp_path, here, a + b)
    export = tmp_path / "export"
    assert cli.main(["export", "--to", str(export), "--data-dir", str(here)]) == 0
    capsys.readouterr()
    manifest = export / "manifest.csv"
    assert cli.main(["reconcile", "--manifest", str(manifest), "--data-dir", str(here)]) == 0
    assert "equal: 2" in capsys.readouterr().out
    # The export folder itself names its manifest.csv.
    assert cli.main(["reconcile", "--manifest", str(export), "--data-dir", str(here)]) == 0
    assert "equal: 2" in capsys.readouterr().out

    # Tamper: one object's hash changed, one object listed that is not here, one dropped.
    rows = list(csv.DictReader(manifest.open()))
    changed = next(r for r in rows if r["sop_instance_uid"] == a[0].SOPInstanceUID)
    changed["sha256"] = "0" * 64
    dropped = next(r for r in rows if r["sop_instance_uid"] == a[1].SOPInstanceUID)
    rows.remove(dropped)
    rows.append({**rows[0], "sop_instance_uid": "1.2.3.4.5.6.7", "study_instance_uid":
                 a[0].StudyInstanceUID, "sha256": "1" * 64})
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report_file = tmp_path / "m.json"
    assert cli.main(["reconcile", "--manifest", str(edited), "--data-dir", str(here),
                     "--json", str(report_file)]) == 1
    out = capsys.readouterr().out
    report = orjson.loads(report_file.read_bytes())
    by_study = {x["study"]: x for x in report["studies"]}
    diff = by_study[a[0].StudyInstanceUID]
    assert diff["status"] == "different"
    assert diff["different_hash"] == [a[0].SOPInstanceUID]
    assert diff["missing_here"] == ["1.2.3.4.5.6.7"]
    assert diff["missing_there"] == [a[1].SOPInstanceUID]
    assert by_study[b[0].StudyInstanceUID]["status"] == "equal"
    assert f"different hash: {a[0].SOPInstanceUID}" in out

    # A plain CSV (no header): study b listed completely, a study that is not here.
    plain = tmp_path / "plain.csv"
    plain.write_text(f"{b[0].StudyInstanceUID},{b[0].SOPInstanceUID}\n"
                     f"1.2.3.9,1.2.3.9.1\n")
    assert cli.main(["reconcile", "--manifest", str(plain), "--data-dir", str(here),
                     "--study", b[0].StudyInstanceUID, "--study", "1.2.3.9",
                     "--json", str(report_file)]) == 1
    report = orjson.loads(report_file.read_bytes())
    assert {x["study"]: x["status"] for x in report["studies"]} == {
        b[0].StudyInstanceUID: "equal", "1.2.3.9": "missing-here"}
    # Unreadable or malformed manifests stop with exit status 2.
    assert cli.main(["reconcile", "--manifest", str(tmp_path / "none.csv"),
                     "--data-dir", str(here)]) == 2
    plain.write_text("1.2.3.9\n")
    assert cli.main(["reconcile", "--manifest", str(plain), "--data-dir", str(here)]) == 2
    assert "manifest line 1" in capsys.readouterr().err
    assert cli.main(["reconcile", "--manifest", str(manifest), "--fetch",
                     "--data-dir", str(here)]) == 2


def test_R_A10_fetch_by_c_move_into_the_running_server_and_send_to_a_destination(tmp_path):
    """--method move: the hospital PACS C-MOVEs to the running pacsd; --send-to: the
    objects go to a [forward.destinations] dimse entry."""
    import subprocess
    import sys

    here = tmp_path / "here"
    here.mkdir()
    hospital_port = free_port()
    conf = here / "pacsd.toml"
    conf.write_text('[server]\nae_title = "PACSA"\n'
                    '[forward.destinations.hospital]\ntype = "dimse"\n'
                    f'ae_title = "HOSPITAL"\nhost = "127.0.0.1"\nport = {hospital_port}\n'
                    '[forward.destinations.web]\ntype = "dicomweb"\n'
                    'url = "http://127.0.0.1:9/dicom-web/studies"\n')
    only_peer, only_here = _study(8, 2, "REC-8"), _study(9, 1, "REC-9")
    _import(tmp_path, here, only_here)
    a = Server(str(here), "--config", str(conf), dicom_port=None)
    d = tmp_path / "hospital"
    d.mkdir()
    peer = Server(str(d), "--ae-title", "HOSPITAL", "--peer",
                  f"PACSA=127.0.0.1:{a.dicom_port}", dicom_port=hospital_port)
    try:
        _stow(peer, only_peer)
        base = [sys.executable, "-m", "pacsd.cli", "reconcile", "--peer",
                f"HOSPITAL=127.0.0.1:{hospital_port}", "--config", str(conf),
                "--data-dir", str(here)]

        def run(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run(base + list(extra), capture_output=True, text=True,
                                  timeout=120)

        r = run("--send", "--send-to", "nowhere")
        assert r.returncode == 2 and "no [forward.destinations] entry" in r.stderr
        r = run("--send", "--send-to", "web")
        assert r.returncode == 2 and "must be of type" in r.stderr
        r = run("--fetch", "--method", "move", "--send", "--send-to", "hospital")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"fetched {_uid(only_peer)}: 2 sent by the peer, 2 instances stored" in r.stdout
        assert f"sent {_uid(only_here)}: 1 instances sent" in r.stdout
        r = run()
        assert r.returncode == 0, r.stdout + r.stderr
        assert "equal: 2" in r.stdout
    finally:
        peer.stop()
        a.stop()


def test_R_A10_report_table_caps_the_uid_lists_and_json_has_them_all():
    from pacsd.reconcile_cli import Reconciliation, StudyDiff
    r = Reconciliation("peer X", [
        StudyDiff("1.1", "different", 2, 14, missing_here=[f"1.1.{n}" for n in range(12)]),
        StudyDiff("1.2", "equal", 3, 3)])
    lines = r.lines(5, manifest=False)
    assert sum(1 for x in lines if x.startswith("    missing here: 1.1.")) == 5
    assert "    missing here: ... 7 more (see --json)" in lines
    assert not any("1.2" == x.split()[-1] for x in lines)  # equal studies: summary only
    assert "equal: 1" in lines and "different: 1" in lines
    assert "instances missing here: 12" in lines
    full = orjson.loads(r.as_json())
    assert len(full["studies"][0]["missing_here"]) == 12 and not r.equal
