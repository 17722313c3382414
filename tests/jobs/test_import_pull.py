"""``pacsd import --from-peer AET`` (R-A3, R-H2): C-FIND by date range / patient / study
on another PACS (a real ``pacsd serve`` process as the old PACS), then C-GET into this
archive bit-exact, or C-MOVE to the running server; resumable through the job queue
(running it again fetches nothing twice)."""
from __future__ import annotations

import subprocess
import sys

import requests
from dicomgen import make_dataset, multipart, to_part10
from fwd_helpers import dataset_bytes
from pacsd_server import Server

from pacsd import cli
from pacsd.index import Catalogue


def populate(srv: Server) -> tuple[list, list]:
    first = make_dataset(seed=1, StudyDate="20240105", PatientID="PULL-1")
    january = [first] + [make_dataset(study=first.StudyInstanceUID,
                                      series=first.SeriesInstanceUID, seed=n,
                                      StudyDate="20240105", PatientID="PULL-1")
                         for n in range(2, 4)]
    older = [make_dataset(seed=7, StudyDate="20230301", PatientID="PULL-2")]
    body, ctype = multipart([to_part10(d) for d in january + older])
    r = requests.post(srv.url + "/dicom-web/studies", data=body,
                      headers={"Content-Type": ctype}, timeout=30)
    assert r.status_code == 200
    return january, older


def old_pacs(tmp_path, *extra: str) -> Server:
    d = tmp_path / "old"
    d.mkdir()
    return Server(str(d), "--ae-title", "OLDPACS", *extra, dicom_port=None)


def stored_bytes(data_dir, ds) -> bytes | None:
    from pacsd.config import Settings
    from pacsd.services import Archive
    s = Settings()
    s.server.data_dir = str(data_dir)
    archive = Archive.open(s)
    try:
        row = archive.catalogue.get_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPInstanceUID)
        return None if row is None else archive.store.read(row.sha256)
    finally:
        archive.close()


def test_pull_by_date_range_with_c_get_then_resume(tmp_path, capsys):
    old = old_pacs(tmp_path)
    try:
        january, older = populate(old)
        here = tmp_path / "here"
        args = ["import", "--from-peer", "OLDPACS", "--peer",
                f"OLDPACS=127.0.0.1:{old.dicom_port}", "--study-date", "20240101-20240131",
                "--data-dir", str(here)]
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert "studies found: 1" in out and "pulled: 1" in out
        assert "instances stored: 3" in out
        for ds in january:
            # The data set exactly as the old PACS had it (C-STORE writes its own meta).
            assert dataset_bytes(stored_bytes(here, ds)) == dataset_bytes(to_part10(ds))
        assert stored_bytes(here, older[0]) is None  # outside the date range
        # Run again: everything is there, nothing is fetched.
        assert cli.main(args) == 0
        out = capsys.readouterr().out
        assert "already complete here: 1" in out and "pulled: 0" in out
        # By patient: the other study.
        assert cli.main(args[:5] + ["--patient-id", "PULL-2", "--data-dir", str(here)]) == 0
        assert "instances stored: 1" in capsys.readouterr().out
        assert dataset_bytes(stored_bytes(here, older[0])) == dataset_bytes(
            to_part10(older[0]))
    finally:
        old.stop()


def test_unknown_or_unreachable_peer_is_exit_status_2(tmp_path, capsys):
    from pacsd_server import free_port
    assert cli.main(["import", "--from-peer", "NOPE", "--data-dir", str(tmp_path)]) == 2
    assert "unknown peer" in capsys.readouterr().err
    assert cli.main(["import", "--from-peer", "GONE", "--peer",
                     f"GONE=127.0.0.1:{free_port()}", "--data-dir", str(tmp_path)]) == 2
    assert "cannot associate" in capsys.readouterr().err


def test_pull_with_c_move_into_the_running_server(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    conf = here / "pacsd.toml"
    conf.write_text('[server]\nae_title = "PACSA"\n')
    a = Server(str(here), "--config", str(conf), dicom_port=None)
    old = old_pacs(tmp_path, "--peer", f"PACSA=127.0.0.1:{a.dicom_port}")
    try:
        january, _ = populate(old)
        r = subprocess.run([sys.executable, "-m", "pacsd.cli", "import", "--from-peer",
                            "OLDPACS", "--peer", f"OLDPACS=127.0.0.1:{old.dicom_port}",
                            "--study", january[0].StudyInstanceUID, "--method", "move",
                            "--config", str(conf), "--data-dir", str(here)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "pulled: 1" in r.stdout and "instances stored: 3" in r.stdout
        cat = Catalogue(f"sqlite:///{here / 'index.db'}")
        try:
            assert len(list(cat.iter_instances(january[0].StudyInstanceUID))) == 3
        finally:
            cat.close()
    finally:
        old.stop()
        a.stop()
