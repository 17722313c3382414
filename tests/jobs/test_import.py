"""``pacsd import PATH...`` (R-A3, R-H2): files, folders (recursively) and ZIP archives
through the one ingest path, with a summary (stored / duplicate / skipped / refused with
reasons), an exit status, resumable by running it again; imported studies are routed by
the forwarding rules and sent by the running server (R-B2)."""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile

import sqlalchemy as sa
from dicomgen import make_dataset, to_part10
from fwd_helpers import StorageSCP, dataset_bytes
from pacsd_server import Server

from pacsd import cli
from pacsd.import_cli import Report, import_progress
from pacsd.index import Catalogue
from pacsd.index.security_schema import audit_events


def tree(tmp_path):
    src = tmp_path / "incoming"
    (src / "day1" / "ct").mkdir(parents=True)
    first = make_dataset(seed=1)
    datasets = [first] + [make_dataset(study=first.StudyInstanceUID,
                                       series=first.SeriesInstanceUID, seed=n)
                          for n in range(2, 6)]
    for n, ds in enumerate(datasets[:3]):
        (src / "day1" / "ct" / f"{n}.dcm").write_bytes(to_part10(ds))
    (src / "day1" / "ct" / "copy-of-0.dcm").write_bytes(to_part10(datasets[0]))
    with zipfile.ZipFile(src / "day2.zip", "w") as zf:
        for n, ds in enumerate(datasets[3:]):
            zf.writestr(f"export/{n}.dcm", to_part10(ds))
        zf.writestr("export/README.txt", "not an image")
    (src / "Thumbs.db").write_bytes(b"\0" * 300)
    return src, datasets


def test_import_folder_and_zip_then_resume(tmp_path, capsys):
    src, datasets = tree(tmp_path)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(to_part10(make_dataset())[:200])  # truncated: refused
    data = tmp_path / "archive"
    status = cli.main(["import", str(src), str(broken), "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert status == 1  # one file refused
    assert "files: 9" in out
    assert "stored: 5" in out
    assert "duplicate (already stored): 1" in out  # copy-of-0.dcm
    assert "skipped (not DICOM): 2" in out  # README.txt in the zip, Thumbs.db
    assert "refused: 1" in out and "broken.dcm" not in out  # no paths unless asked
    cat = Catalogue(f"sqlite:///{data / 'index.db'}")
    try:
        for ds in datasets:
            row = cat.get_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                   ds.SOPInstanceUID)
            assert row is not None
        with cat.engine.connect() as conn:
            ev = conn.execute(sa.select(audit_events).where(
                audit_events.c.event_type == "instances-stored")).all()
        assert [(e.study_uid, e.object_count, e.device) for e in ev] == [
            (datasets[0].StudyInstanceUID, 5, "pacsd import")]
    finally:
        cat.close()
    # Resumable: run again (e.g. after an interruption): nothing new, nothing lost.
    status = cli.main(["import", str(src), "--data-dir", str(data), "--list-refused"])
    out = capsys.readouterr().out
    assert status == 0
    assert "stored: 0" in out and "duplicate (already stored): 6" in out
    status = cli.main(["import", str(broken), "--data-dir", str(data), "--list-refused"])
    assert status == 1 and "broken.dcm" in capsys.readouterr().out


def test_missing_path_is_exit_status_2(tmp_path, capsys):
    assert cli.main(["import", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_progress_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    stream = Tty()
    bar = import_progress(stream)
    r = Report(total=4, stored=2, duplicate=1)
    bar(r, final=True)
    assert "3/4" in stream.getvalue() and "stored 2" in stream.getvalue()


def test_import_beside_a_running_server_is_forwarded_R_B2(tmp_path):
    """The import (another process) routes by the rules; the server's runner sends."""
    scp = StorageSCP("CITY").start()
    data = tmp_path / "archive"
    data.mkdir()
    conf = data / "pacsd.toml"
    conf.write_text(f"""[jobs]
poll_interval_s = 0.1
[forward]
batch_delay_s = 0.0
[forward.destinations.city]
type = "dimse"
ae_title = "CITY"
host = "127.0.0.1"
port = {scp.port}
[[forward.rules]]
destinations = ["city"]
match = {{ Modality = "CT" }}
""")
    srv = Server(str(data), "--config", str(conf))
    try:
        src, datasets = tree(tmp_path)
        r = subprocess.run([sys.executable, "-m", "pacsd.cli", "import", str(src),
                            "--config", str(conf), "--data-dir", str(data)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        import time
        end = time.monotonic() + 60
        while len(scp.received) < 5:
            assert time.monotonic() < end, "not forwarded"
            time.sleep(0.1)
        for ds in datasets:
            assert scp.received[ds.SOPInstanceUID] == dataset_bytes(to_part10(ds))
    finally:
        srv.stop()
        scp.stop()


def test_import_a_dicomdir_media(tmp_path, capsys):
    """A CD/DVD export: the DICOMDIR names the folder, its files are imported, the
    DICOMDIR itself is skipped (not refused)."""
    from pydicom.fileset import FileSet
    first = make_dataset(seed=1)
    datasets = [first, make_dataset(study=first.StudyInstanceUID,
                                    series=first.SeriesInstanceUID, seed=2)]
    media = tmp_path / "cd"
    fs = FileSet()
    for n, ds in enumerate(datasets):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(to_part10(ds))
        fs.add(str(path))
    fs.write(str(media))
    data = tmp_path / "archive"
    assert cli.main(["import", str(media / "DICOMDIR"), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "stored: 2" in out and "skipped (not DICOM): 1" in out and "refused: 0" in out
